"""Whole-volume segmentation with a trained student network (``cmedl segment``).

Pipeline of :func:`segment_volume` for one volume ``[z, y, x]``:

1. :func:`cmedl.data.preprocess.prepare_volume` with the preprocessing stored in the checkpoint
   (intensity normalisation, optional in-plane resampling, in-plane crop to the body box padded to a
   multiple of 16; slices are never dropped, so working slice ``k`` is input slice ``k``);
2. the student alone runs slice by slice (axial slices, batches of ``batch_size``) under
   :func:`torch.inference_mode`; the working grid is padded once for the whole volume to the
   network's ``stride`` (not per slice) and the sigmoid probabilities are written into one
   preallocated float32 array. A 3D student (``net.dims == 3``, the ``ct-only-3d`` 3D U-Net)
   instead runs over the whole working volume by sliding window
   (:func:`cmedl.nets.sliding_window_predict_3d`: patches of the training ``data.patch_size_3d``,
   25 % overlap, Gaussian blending of the logits; :func:`predict_volume_3d`);
3. the probability map goes back onto exactly the input grid with
   :func:`cmedl.data.preprocess.restore_to_input` (linear interpolation if the preprocessing
   resampled in-plane, probability 0 outside the body crop);
4. :func:`cmedl.inference.postprocess.postprocess_probabilities`: ``p >= threshold``, optional
   largest 3D connected component and per-slice hole filling. The mask is the thresholded
   *restored* probability map, so the written mask and probability files always agree voxel by
   voxel (``mask == (prob >= threshold)`` before the optional clean-ups); thresholding the linearly
   interpolated probabilities also gives smoother boundaries than nearest-neighbour resampling of a
   working-grid mask when the preprocessing resamples.

Speed (CPU is the path most users run): the network is run from an inference copy whose
convolution + batch-norm pairs are folded into one convolution (exact up to float rounding) and,
on CPU, in ``channels_last`` memory format (oneDNN's fast layout). With the paper U-Net on 512x512
slices this runs at 85-100 % of the machine's fp32 matmul peak (contiguous format without folding:
~70 %); ``benchmarks/bench_segment.py`` measures it. Batch size does not change the result (batch
norm uses running statistics in eval mode); on CPU one 512x512 slice per pass is as fast as larger
batches and keeps peak memory low (~1.2 GB peak RSS for a 512x512x134 CT), so the default batch
(``batch_size=None``) holds about 512x512 pixels on CPU and 8 slices on CUDA.

Test-time (Monte Carlo) dropout, as in the CBCT paper's robustness analysis: with
``mc_dropout_samples = N > 0`` only the network's dropout layers are switched to training mode
(``net.enable_mc_dropout()``) and each slice batch runs ``N`` times with a fixed seed; the mean
probability replaces the single-pass one and the per-voxel standard deviation over the ``N`` passes
(population SD, ``ddof = 0``) is returned as the uncertainty map. A network built without dropout
gives SD 0 everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cmedl.devices import keep_freed_host_memory, resolve_device
from cmedl.errors import CmedlError, InputError
from cmedl.inference.postprocess import postprocess_probabilities
from cmedl.io.volume import IMAGE_SUFFIXES, Volume, read_volume, write_volume

if TYPE_CHECKING:
    from cmedl.data.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

#: Pixels per forward pass chosen by ``batch_size=None`` on CPU (one 512x512 slice): measured as
#: fast as larger batches with the paper U-Net (see benchmarks/bench_segment.py) at a fraction of
#: the activation memory (~0.6 GB per 512x512 slice at width 64).
CPU_PIXELS_PER_BATCH = 512 * 512
#: Slices per forward pass chosen by ``batch_size=None`` on CUDA.
CUDA_BATCH = 8


@dataclass
class SegmentationResult:
    """Output of :func:`segment_volume`, every volume on exactly the input's grid.

    Attributes:
        mask: ``uint8`` {0, 1} tumour mask.
        probabilities: float32 sigmoid probabilities in [0, 1] (MC mean with MC dropout), or None
            unless requested.
        uncertainty: float32 per-voxel SD of the probability over the MC-dropout passes, or None
            without MC dropout.
    """

    mask: Volume
    probabilities: Volume | None = None
    uncertainty: Volume | None = None


# ============================================================================ devices and nets
def fold_batchnorm(net: nn.Module) -> int:
    """Fold every ``Conv2d``/``Conv3d`` directly followed by a ``BatchNorm`` inside an
    ``nn.Sequential`` into one convolution, in place; returns the number of pairs folded.

    Only valid in eval mode (running statistics); a folded BN becomes ``nn.Identity``. Written here
    because torch's ``fuse_modules`` needs the module names of each pair while this works on any
    network built from ``Sequential(conv, bn, ...)`` blocks (U-Net, generators); pairs elsewhere
    (e.g. pre-activation BN -> ReLU -> conv) are left alone, which is always correct.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def inference_copy(
    net: nn.Module, device: torch.device, *, channels_last: bool | None = None, fold_bn: bool = True
) -> nn.Module:
    """A copy of ``net`` ready for fast inference: eval mode, BN folded, on ``device``, and in
    ``channels_last`` memory format (default: on CPU only). The caller's network is not modified."""
    inf = copy.deepcopy(net).eval()
    for p in inf.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(inf)
    if channels_last is None:
        channels_last = device.type == "cpu"
    layout = torch.channels_last_3d if int(getattr(net, "dims", 2)) == 3 else torch.channels_last
    fmt = layout if channels_last else torch.contiguous_format
    inf = inf.to(device=device, memory_format=fmt)
    inf._cmedl_inference = (device, fmt)  # marks the copy so predict_slices reuses it
    return inf


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
    marker = getattr(net, "_cmedl_inference", None)
    if marker is not None and marker[0] == dev and channels_last is None:
        run_net = net
    else:
        run_net = inference_copy(net, dev, channels_last=channels_last)
    fmt = run_net._cmedl_inference[1]
    run_net.eval()  # also switches MC dropout off again on a reused copy
    if mc_dropout_samples:
        n_layers = _enable_mc_dropout(run_net)
        if n_layers == 0:
            log.warning(
                "MC dropout requested but the network has no dropout layers: the SD map is 0"
            )

    # Pad once for the whole volume (a view when nothing is needed).
    stride = int(getattr(net, "stride", 1) or 1)
    pr, pc = (-rows) % stride, (-cols) % stride
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if pr or pc:
        arr = np.pad(
            arr, ((0, 0), (0, pr), (0, pc)), mode="constant", constant_values=np.float32(pad_value)
        )

    out = np.empty((z, rows, cols), dtype=np.float32)
    sd = np.empty((z, rows, cols), dtype=np.float32) if mc_dropout_samples else None
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
            x = torch.from_numpy(arr[start:stop]).unsqueeze(1)
            x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
            if mc_dropout_samples:
                samples = torch.stack(
                    [_forward(run_net, x, activation) for _ in range(mc_dropout_samples)]
                )
                s, m = torch.std_mean(samples, dim=0, correction=0)
                del samples
                out[start:stop] = m[:, 0, :rows, :cols].cpu().numpy()
                sd[start:stop] = s[:, 0, :rows, :cols].cpu().numpy()  # type: ignore[index]
            else:
                y = _forward(run_net, x, activation)
                out[start:stop] = y[:, 0, :rows, :cols].cpu().numpy()
            del x
    return out, sd


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
    from cmedl.nets import sliding_window_predict_3d

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
    marker = getattr(net, "_cmedl_inference", None)
    if marker is not None and marker[0] == dev and channels_last is None:
        run_net = net
    else:
        run_net = inference_copy(net, dev, channels_last=channels_last)
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


def _enable_mc_dropout(net: nn.Module) -> int:
    """Dropout layers only in training mode (``net.enable_mc_dropout()`` of cmedl networks, else
    every ``nn.Dropout*`` module); returns how many were switched on."""
    enable = getattr(net, "enable_mc_dropout", None)
    if callable(enable):
        return int(enable())
    n = 0
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
            n += 1
    return n


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


# ============================================================================ one volume
def segment_volume(
    volume: Volume,
    net: nn.Module,
    preprocess: PreprocessConfig,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
    largest_component: bool = False,
    fill_holes: bool = False,
    return_probabilities: bool = False,
    amp_bf16: bool = False,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    channels_last: bool | None = None,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> SegmentationResult:
    """Segment one volume with a 2D (slice-wise) or 3D (sliding-window) student; every output is on
    ``volume``'s exact grid.

    Args:
        volume: the CT/CBCT volume (CT in HU), array ``[z, y, x]``.
        net: the student segmentation network (logits ``[B, 1, H, W]``); it is not modified.
        preprocess: the preprocessing the network was trained with (stored in its checkpoint).
        batch_size: slices per forward pass; None = about 512x512 pixels per pass on CPU, 8 on CUDA.
            The result does not depend on it.
        device: ``cpu``, ``cuda`` or ``auto``.
        threshold: probability threshold of the mask (``p >= threshold``), in (0, 1).
        largest_component: keep only the largest 3D connected component (26-connectivity).
        fill_holes: fill holes in every axial slice of the mask.
        return_probabilities: also return the probability map.
        amp_bf16: bf16 autocast (about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs;
            probabilities differ from fp32 by ~1e-2).
        mc_dropout_samples: N > 0 enables test-time dropout with N passes (mean probability and
            per-voxel SD; see the module docstring).
        seed: seed of the MC-dropout masks.
        channels_last: memory format (None: channels_last on CPU, where it is faster).
        patch_size: ``(d, h, w)`` sliding window of a 3D student (``net.dims == 3``; required
            then: the checkpoint's ``data.patch_size_3d``); ignored for 2D students.
        overlap: sliding-window overlap of a 3D student, in ``[0, 1)``.

    Raises:
        InputError: bad arguments or an image the preprocessing refuses (named by its source).
    """
    from cmedl.data.preprocess import prepare_volume, restore_to_input

    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    is_3d = int(getattr(net, "dims", 2)) == 3
    if is_3d and patch_size is None:
        raise InputError("a 3D student needs the sliding-window patch size (the checkpoint's data.patch_size_3d)")
    if is_3d and mc_dropout_samples:
        raise InputError("MC dropout is implemented for 2D (slice-wise) students only")
    prepared = prepare_volume(volume, preprocess)
    if is_3d:
        probs_w: np.ndarray = predict_volume_3d(
            net, prepared.image, patch_size, overlap=overlap, batch_size=batch_size,  # type: ignore[arg-type]
            device=device, amp_bf16=amp_bf16, pad_value=prepared.pad_value, channels_last=channels_last,
        )
        sd_w: np.ndarray | None = None
    else:
        probs_w, sd_w = predict_slices(
            net,
            prepared.image,
            batch_size=batch_size,
            device=device,
            amp_bf16=amp_bf16,
            activation=torch.sigmoid,
            pad_value=prepared.pad_value,
            mc_dropout_samples=mc_dropout_samples,
            seed=seed,
            channels_last=channels_last,
        )
    probs = restore_to_input(probs_w, prepared, is_label=False, fill_value=0.0)
    del probs_w
    np.clip(probs, 0.0, 1.0, out=probs)  # linear interpolation cannot leave [0, 1]; guards rounding
    mask = postprocess_probabilities(probs, threshold, largest_component, fill_holes)
    uncertainty = None
    if sd_w is not None:
        sd = restore_to_input(sd_w, prepared, is_label=False, fill_value=0.0)
        uncertainty = volume.with_array(np.maximum(sd, 0.0, out=sd))
    return SegmentationResult(
        mask=volume.with_array(mask),
        probabilities=volume.with_array(probs) if return_probabilities else None,
        uncertainty=uncertainty,
    )


# ============================================================================ files
def case_name(path: str | Path) -> str:
    """Case name of an input: the file name without its image suffix (``ct.nii.gz`` -> ``ct``),
    or the folder name of a DICOM series."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_inputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[tuple[Path, str]]:
    """Validate inputs and output folder before any work: every input exists, case names are
    unique (they name the outputs), ``out_dir`` is not a file. Returns ``[(path, case), ...]``."""
    if not inputs:
        raise InputError("no input volumes given")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", out_dir)
    cases: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError("no such file or folder", path)
        name = case_name(path)
        if name in seen:
            raise InputError(
                f"gives the same case name '{name}' as {seen[name]}; outputs would overwrite each other",
                path,
            )
        seen[name] = path
        cases.append((path, name))
    return cases


def _progress(items: list[Any], desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="volume", disable=None if enabled else True)


@contextlib.contextmanager
def errors_naming(path: Path, device: torch.device) -> Iterator[None]:
    """Re-raise user errors of the block as naming input ``path``; out-of-memory as a one-line error."""
    try:
        yield
    except CmedlError as exc:
        raise (exc if str(path) in str(exc) else InputError(str(exc), path)) from None
    except torch.OutOfMemoryError:
        raise InputError(f"out of memory on {device}; lower --batch-size", path) from None


def _load_student(
    model_path: str | Path,
) -> tuple[nn.Module, PreprocessConfig, tuple[int, int, int] | None]:
    """Student, its preprocessing and, for a 3D student, the sliding-window size (training patch)."""
    from cmedl.methods import build_student_from_checkpoint
    from cmedl.training.checkpoint import load_checkpoint
    from cmedl.training.config import TrainConfig

    ckpt = load_checkpoint(model_path)
    net, cfg = build_student_from_checkpoint(ckpt, source=model_path)
    patch = None
    if int(getattr(net, "dims", 2)) == 3:  # the config was validated by build_student_from_checkpoint
        p = TrainConfig.from_dict(ckpt["config"]).data.patch_size_3d
        patch = (int(p[0]), int(p[1]), int(p[2]))
    return net, cfg, patch


def segment_files(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    largest_component: bool = False,
    fill_holes: bool = False,
    probabilities: bool = False,
    batch_size: int | None = None,
    device: str = "cpu",
    amp_bf16: bool = False,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Segment image files / DICOM folders with the student of checkpoint ``model_path``.

    The checkpoint is loaded once. For each input, ``<out_dir>/<case>.nii.gz`` (uint8 mask) is
    written, plus ``<case>_prob.nii.gz`` (float32 probabilities) with ``probabilities`` and
    ``<case>_sd.nii.gz`` (float32 MC-dropout SD) with ``mc_dropout_samples > 0``; ``case`` is the
    file name without its image suffix or the DICOM folder's name. All inputs are checked before
    the first is processed; every write is atomic, so an error never leaves a partial file.
    Other arguments: see :func:`segment_volume`.

    Returns:
        The mask paths, in input order.

    Raises:
        InputError: one line naming the offending input, checkpoint or output folder.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if mc_dropout_samples < 0:
        raise InputError(f"the number of MC-dropout samples must be >= 0, got {mc_dropout_samples}")
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_host_memory()
    cases = check_inputs(inputs, out_dir)
    net, cfg, patch_size = _load_student(model_path)
    if patch_size is not None and mc_dropout_samples:
        raise InputError("MC dropout is implemented for 2D (slice-wise) students only", model_path)
    run_net = inference_copy(net, dev)
    del net
    out_dir = Path(out_dir)
    written: list[Path] = []
    for path, name in _progress(cases, "segment", progress):
        with errors_naming(path, dev):
            volume = read_volume(path)
            result = segment_volume(
                volume,
                run_net,
                cfg,
                batch_size=batch_size,
                device=dev,
                threshold=threshold,
                largest_component=largest_component,
                fill_holes=fill_holes,
                return_probabilities=probabilities,
                amp_bf16=amp_bf16,
                mc_dropout_samples=mc_dropout_samples,
                seed=seed,
                patch_size=patch_size,
            )
        del volume
        written.append(write_volume(result.mask, out_dir / f"{name}.nii.gz"))
        if result.probabilities is not None:
            write_volume(result.probabilities, out_dir / f"{name}_prob.nii.gz")
        if result.uncertainty is not None:
            write_volume(result.uncertainty, out_dir / f"{name}_sd.nii.gz")
        del result
    return written


__all__ = [
    "SegmentationResult",
    "case_name",
    "check_inputs",
    "fold_batchnorm",
    "inference_copy",
    "predict_slices",
    "predict_volume_3d",
    "resolve_device",
    "segment_files",
    "segment_volume",
]
