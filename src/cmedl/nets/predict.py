"""Running a trained network over whole volumes: the one prediction path of training-time
validation and of ``cmedl segment`` / ``cmedl translate``.

- :func:`inference_copy` makes an :class:`InferenceNet`: a copy of the network in eval mode with
  convolution + batch-norm pairs folded into one convolution (:func:`fold_batchnorm`, exact up to
  float rounding), on the device, and on CPU in ``channels_last`` memory format (oneDNN's fast
  layout). With the paper U-Net on 512x512 slices this runs at 85-100 % of the machine's fp32 matmul
  peak (contiguous format without folding: ~70 %); ``benchmarks/bench_segment.py`` measures it.
- :func:`predict_slices` runs a 2D network over every axial slice (batches of slices, the volume
  padded once to the network's ``stride``), with optional test-time (MC) dropout: with
  ``mc_dropout_samples = N > 0`` only the dropout layers are switched to training mode and each
  batch runs N times with a fixed seed; the mean replaces the single pass and the per-voxel
  population SD (``ddof = 0``) is returned as the uncertainty map (0 without dropout layers).
- :func:`predict_volume_3d` runs a 3D network by sliding window (MONAI, Gaussian blending).

Batch size does not change the result (batch norm uses running statistics in eval mode); on CPU one
512x512 slice per pass is as fast as larger batches and keeps peak memory low (~1.2 GB peak RSS for
a 512x512x134 CT), so the default batch holds about 512x512 pixels on CPU and 8 slices on CUDA.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cmedl.devices import resolve_device
from cmedl.errors import InputError
from cmedl.nets.unet3d import sliding_window_predict_3d

log = logging.getLogger(__name__)

#: Pixels per forward pass chosen by ``batch_size=None`` on CPU (one 512x512 slice): measured as
#: fast as larger batches with the paper U-Net (see benchmarks/bench_segment.py) at a fraction of
#: the activation memory (~0.6 GB per 512x512 slice at width 64).
CPU_PIXELS_PER_BATCH = 512 * 512
#: Slices per forward pass chosen by ``batch_size=None`` on CUDA.
CUDA_BATCH = 8


# ============================================================================ devices and nets
def fold_batchnorm(net: nn.Module) -> int:
    """Fold every ``Conv2d``/``Conv3d`` directly followed by a ``BatchNorm`` inside an
    ``nn.Sequential`` into one convolution, in place; returns the number of pairs folded.

    Only valid in eval mode (running statistics); a folded BN becomes ``nn.Identity``. Written here
    because torch's ``fuse_modules`` needs the module names of each pair while this works on any
    network built from ``Sequential(conv, bn, ...)`` blocks (U-Net, generators); pairs elsewhere
    (e.g. pre-activation BN -> ReLU -> conv) are left alone, which is always correct.
    """
    folded = 0
    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (
                isinstance(conv, (nn.Conv2d, nn.Conv3d))
                and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d))
                and bn.track_running_stats
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
            ):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
                folded += 1
    return folded


def network_dims(net: nn.Module) -> int:
    """Spatial dimensions a network works in: its ``dims`` (cmedl's segmentation networks, test-time
    models and inference copies declare it); any other module is taken as a 2D network."""
    return int(getattr(net, "dims", 2))


def size_multiple(net: nn.Module) -> int:
    """The input size multiple a network needs: its ``stride`` (cmedl's networks declare one as an int;
    a plain convolution's ``stride`` tuple is its step, not a size constraint), else 1."""
    stride = getattr(net, "stride", 1)
    return stride if isinstance(stride, int) and stride > 0 else 1


class InferenceNet(nn.Module):
    """A network prepared for fast inference on one device (made by :func:`inference_copy`); the
    runners use it as it is instead of copying the network again."""

    def __init__(self, net: nn.Module, device: torch.device, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.net = net
        self.device = device
        self.memory_format = memory_format
        self.dims = network_dims(net)
        self.stride = size_multiple(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def enable_mc_dropout(self) -> int:
        """Dropout layers only in training mode (test-time dropout); returns how many."""
        n = 0
        for m in self.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
                n += 1
        return n


def inference_copy(
    net: nn.Module, device: torch.device, *, channels_last: bool | None = None, fold_bn: bool = True
) -> InferenceNet:
    """A copy of ``net`` ready for fast inference: eval mode, BN folded, on ``device``, and in
    ``channels_last`` memory format (default: on CPU only). The caller's network is not modified."""
    inf = copy.deepcopy(net.net if isinstance(net, InferenceNet) else net).eval()
    for p in inf.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(inf)
    if channels_last is None:
        channels_last = device.type == "cpu"
    layout = torch.channels_last_3d if network_dims(inf) == 3 else torch.channels_last
    fmt = layout if channels_last else torch.contiguous_format
    return InferenceNet(inf.to(device=device, memory_format=fmt), device, fmt).eval()


def _ready(net: nn.Module, device: torch.device, channels_last: bool | None) -> InferenceNet:
    """``net`` itself when it is an inference copy for ``device`` (and no layout is asked), else a new copy."""
    if isinstance(net, InferenceNet) and net.device == device and channels_last is None:
        return net
    return inference_copy(net, device, channels_last=channels_last)


def default_batch_size(device: torch.device, rows: int, cols: int) -> int:
    """Slices per forward pass when the user gives none (see :data:`CPU_PIXELS_PER_BATCH`)."""
    if device.type == "cuda":
        return CUDA_BATCH
    return max(1, CPU_PIXELS_PER_BATCH // max(1, rows * cols))


# ============================================================================ slice-wise runner
def predict_slices(
    net: nn.Module,
    image: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    amp_bf16: bool = False,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.sigmoid,
    pad_value: float = -1.0,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    channels_last: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run a 2D network over every axial slice of ``image`` and stack the outputs.

    Args:
        net: a 2D network mapping ``[B, 1, H, W]`` to ``[B, 1, H, W]`` (logits or images); its
            ``stride`` attribute (default 1) is the size multiple it needs.
        image: float32 ``[z, rows, cols]`` network input (already normalised).
        batch_size: slices per forward pass (None: :func:`default_batch_size`).
        device: ``cpu``, ``cuda`` or ``auto``.
        amp_bf16: run under bf16 autocast (weights stay fp32; outputs are cast back to fp32).
        activation: applied to the network output (sigmoid for segmentation logits; None: as is).
        pad_value: value of the rows/cols added at the bottom/right to reach a multiple of
            ``net.stride`` (added once for the whole volume, then cropped off again).
        mc_dropout_samples: N > 0 runs N passes with dropout on and returns (mean, SD).
        seed: seed of the MC-dropout masks (the global RNG state is left untouched).
        channels_last: memory format of the inference copy (None: on CPU only). ``net`` is used
            as it is when it already is an :func:`inference_copy` for ``device``; otherwise such
            a copy is made (the caller's network is never modified).

    Returns:
        ``(output, sd)``: float32 ``[z, rows, cols]`` and the per-voxel SD (None unless MC dropout).
    """
    if image.ndim != 3:
        raise InputError(f"image must be 3D [z, rows, cols], got shape {image.shape}")
    if mc_dropout_samples < 0:
        raise InputError(f"the number of MC-dropout samples must be >= 0, got {mc_dropout_samples}")
    dev = resolve_device(device)
    z, rows, cols = image.shape
    if batch_size is None:
        batch_size = default_batch_size(dev, rows, cols)
    if int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    run_net = _ready(net, dev, channels_last)
    fmt = run_net.memory_format
    run_net.eval()  # also switches MC dropout off again on a reused copy
    if mc_dropout_samples:
        n_layers = run_net.enable_mc_dropout()
        if n_layers == 0:
            log.warning(
                "MC dropout requested but the network has no dropout layers: the SD map is 0"
            )

    # Pad once for the whole volume (a view when nothing is needed).
    stride = run_net.stride
    pr, pc = (-rows) % stride, (-cols) % stride
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if pr or pc:
        arr = np.pad(
            arr, ((0, 0), (0, pr), (0, pc)), mode="constant", constant_values=np.float32(pad_value)
        )

    # On CUDA the volume goes up once and the outputs come back once (one synchronisation per volume,
    # not two per batch); on CPU the output tensors share memory with the returned arrays.
    src = torch.from_numpy(arr)
    if dev.type == "cuda":
        src = src.to(dev)
    out_t = torch.empty((z, rows, cols), dtype=torch.float32, device=src.device)
    sd_t = torch.empty_like(out_t) if mc_dropout_samples else None
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp_bf16))
    rng_devices = (
        [dev.index if dev.index is not None else torch.cuda.current_device()]
        if dev.type == "cuda"
        else []
    )
    with torch.inference_mode(), autocast, torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(int(seed))
        for start in range(0, z, batch_size):
            stop = min(start + batch_size, z)
            x = src[start:stop].unsqueeze(1).contiguous(memory_format=fmt)
            mean, spread = _predict_batch(run_net, x, activation, mc_dropout_samples)
            out_t[start:stop] = mean[:, 0, :rows, :cols]
            if sd_t is not None:
                sd_t[start:stop] = spread[:, 0, :rows, :cols]  # type: ignore[index]
            del x
    return out_t.cpu().numpy(), (sd_t.cpu().numpy() if sd_t is not None else None)


def predict_volume_3d(
    net: nn.Module,
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.25,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    amp_bf16: bool = False,
    pad_value: float = -1.0,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Sigmoid probabilities of a 3D network over a whole volume by sliding window.

    Args:
        net: a 3D network mapping ``[B, 1, d, h, w]`` patches to logits of the same size.
        image: float32 ``[z, rows, cols]`` network input (already normalised).
        patch_size: ``(d, h, w)`` window in voxels (the training patch size).
        overlap: fraction of overlap of neighbouring windows, in ``[0, 1)``; overlapping logits
            are blended with Gaussian weights (MONAI ``sliding_window_inference``).
        batch_size: windows per forward pass (None: 1 on CPU, :data:`CUDA_BATCH` on CUDA).
        device, amp_bf16, channels_last: as in :func:`predict_slices`.
        pad_value: axes shorter than the window are padded at their high end with this value
            (the preprocessing's background, rather than MONAI's constant 0) and cropped back.

    Returns:
        float32 ``[z, rows, cols]`` probabilities.
    """
    if image.ndim != 3:
        raise InputError(f"image must be 3D [z, rows, cols], got shape {image.shape}")
    if len(patch_size) != 3 or min(int(p) for p in patch_size) < 1:
        raise InputError(f"3D patch size must be three positive ints (d, h, w), got {tuple(patch_size)}")
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = CUDA_BATCH if dev.type == "cuda" else 1
    if int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    run_net = _ready(net, dev, channels_last)
    shape = image.shape
    pads = [max(int(p) - n, 0) for p, n in zip(patch_size, shape)]
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if any(pads):
        arr = np.pad(arr, [(0, p) for p in pads], mode="constant", constant_values=np.float32(pad_value))
    x = torch.from_numpy(arr).to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp_bf16))
    with torch.inference_mode(), autocast:
        logits = sliding_window_predict_3d(
            run_net, x, [int(p) for p in patch_size], overlap=float(overlap), sw_batch_size=int(batch_size)
        )
        probs = torch.sigmoid(logits.float())[0, 0, : shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(probs.cpu().numpy(), dtype=np.float32)


def _predict_batch(net: nn.Module, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] | None,
                   mc_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass (``mc_samples == 0``) or the mean and population SD of ``mc_samples`` dropout passes."""
    if not mc_samples:
        return _forward(net, x, activation), None
    samples = torch.stack([_forward(net, x, activation) for _ in range(mc_samples)])
    spread, mean = torch.std_mean(samples, dim=0, correction=0)
    return mean, spread


def _forward(
    net: nn.Module, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    y = net(x)
    if isinstance(y, (tuple, list)):  # a net that returns (logits, features)
        y = y[0]
    y = y.float()
    if y.dim() != 4 or y.shape[1] != 1:
        raise InputError(f"the network must return [B, 1, H, W], got shape {tuple(y.shape)}")
    return activation(y) if activation is not None else y




__all__ = [
    "CPU_PIXELS_PER_BATCH", "CUDA_BATCH", "InferenceNet", "default_batch_size", "fold_batchnorm", "inference_copy",
    "network_dims", "predict_slices", "predict_volume_3d", "size_multiple",
]
