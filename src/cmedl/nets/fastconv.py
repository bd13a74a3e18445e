"""Faster CPU training for large-kernel convolutions with one input or one output channel.

The CycleGAN generators start and end with 7x7 convolutions between the grayscale image and ``w``
feature maps (``c7s1``: 1 -> w and w -> 1). They hold ~2 % of a cpu-demo CMEDL step's FLOPs, yet
oneDNN (PyTorch's CPU convolution backend) runs them at 8-18 GFLOP/s against ~130-160 GFLOP/s for
the generators' other layers: on the project's 2-core reference machine they took ~45 ms of the
~130 ms forward + backward of a 16-image generator batch (``torch.profiler``), ~80 ms of the
~550 ms fp32 step. oneDNN is fast in one case only: one input channel, forward (and its weight
gradient). Everything else (the one-output-channel convolution and its gradients, and the input
gradient of the one-input-channel convolution, which is a one-output-channel convolution too) is
run here as a **space-to-depth convolution**, which oneDNN handles well:

``y = conv2d(x, w)`` with ``w [O, C, k, k]`` equals ``pixel_shuffle(conv2d(pixel_unshuffle(x, s), W), s)``
(cropped; written here as view/permute copies, which were ~2x faster than those two functions)
where ``W [O*s*s, C*s*s, P, P]`` (``P = ceil((k + s - 1) / s)``) places tap ``(u, v)`` of ``w`` at
output phase ``(a, b)``, input phase ``(alpha, beta)`` and offset ``(p, q)`` when
``u = s*p + alpha - a`` and ``v = s*q + beta - b``. With ``s = 4`` a 16 -> 1 7x7 convolution becomes
a 256 -> 16 3x3 one on a 16x smaller grid: 3x the FLOPs, but 2.2-2.3x faster (forward + backward,
measured on [8 | 16, 16, 70, 70] inputs). ``W`` is ``w`` times a fixed one-hot matrix, so autograd
gives the weight gradient. Kernels under 5x5 do not gain (the PatchGAN's 4x4 head and the U-Nets'
1x1 heads stay as they are).

:class:`SingleChannelConv2d` is a drop-in :class:`torch.nn.Conv2d` (same parameters and state-dict
keys). The faster path is taken only where it was measured to help: CPU, float32 without autocast,
stride 1, no dilation or groups, zero padding, a kernel of at least 5x5, while gradients are being
recorded (and, for one input channel, only when the input needs its gradient). Everything else
(CUDA, bf16 autocast, inference) is plain ``nn.Conv2d``. Results equal ``F.conv2d`` to float32
rounding (tested: values and all gradients).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: space-to-depth factor (4: a 7x7 kernel becomes 3x3 on a 4x coarser grid, 16 output phases)
S2D_FACTOR = 4
#: the smallest kernel side for which the faster path is used
MIN_KERNEL = 5
_enabled = True


@contextlib.contextmanager
def fast_path_disabled() -> Iterator[None]:
    """Run every :class:`SingleChannelConv2d` as plain ``nn.Conv2d``, and every
    :class:`cmedl.nets.conv3d.Conv3d` unsplit, inside the block.

    For A/B timing, and for counting a model's FLOPs: the space-to-depth convolutions do ~3x the
    arithmetic of the convolution they replace (and the split 3D ones their halos twice), so a FLOP
    counter must see the plain one (``benchmarks/bench_train_step.py`` does this).
    """
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def fast_path_enabled() -> bool:
    """False inside :func:`fast_path_disabled`."""
    return _enabled


def autocast_on_cpu() -> bool:
    """Whether CPU autocast is on (the fast paths are float32 only)."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4 has no device argument
        return bool(torch.is_autocast_cpu_enabled())


@functools.lru_cache(maxsize=16)
def _phase_matrix(kh: int, kw: int, s: int) -> tuple[torch.Tensor, int, int]:
    """One-hot ``[kh*kw, s*s*s*s*P*Q]`` map from kernel taps to the space-to-depth kernel, and P, Q.

    Cached: built as a plain float32 CPU tensor whatever the caller's context (an inference-mode
    tensor in the cache would break later training calls)."""
    p_n, q_n = (kh + s - 2) // s + 1, (kw + s - 2) // s + 1
    with torch.inference_mode(False):
        return _fill_phase_matrix(kh, kw, s, p_n, q_n), p_n, q_n


def _fill_phase_matrix(kh: int, kw: int, s: int, p_n: int, q_n: int) -> torch.Tensor:
    m = torch.zeros(kh * kw, s, s, s, s, p_n, q_n, dtype=torch.float32, device="cpu")
    for a in range(s):
        for al in range(s):
            for p in range(p_n):
                u = s * p + al - a
                if not 0 <= u < kh:
                    continue
                for b in range(s):
                    for be in range(s):
                        for q in range(q_n):
                            v = s * q + be - b
                            if 0 <= v < kw:
                                m[u * kw + v, a, b, al, be, p, q] = 1.0
    return m.reshape(kh * kw, -1)


def space_to_depth_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          padding: tuple[int, int] = (0, 0), factor: int = S2D_FACTOR) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, zero padding) computed as a
    convolution on the space-to-depth rearrangement of ``x`` (``pixel_unshuffle(x, factor)``).

    Same result to float32 rounding and differentiable in all arguments; faster on CPU where the
    direct convolution has one output channel and a large kernel (module docstring).
    """
    n, c, h, wd = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight {tuple(weight.shape)} does not match input channels {c}")
    s, (ph, pw) = int(factor), padding
    m, p_n, q_n = _phase_matrix(kh, kw, s)
    ho, wo = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1
    hi, wi = -(-ho // s) + p_n - 1, -(-wo // s) + q_n - 1  # coarse input grid
    # one zero pad (the convolution's own, then up to a multiple of s) and one copy into the
    # [n, c*s*s, hi, wi] layout: a view/permute/reshape copy, ~2x faster than F.pixel_unshuffle here
    xp = F.pad(x, (pw, s * wi - wd - pw, ph, s * hi - h - ph))
    xs = xp.view(n, c, hi, s, wi, s).permute(0, 1, 3, 5, 2, 4).reshape(n, c * s * s, hi, wi)
    big = (weight.reshape(o * c, kh * kw) @ m.to(weight)).view(o, c, s * s, s * s, p_n, q_n)
    big = big.transpose(1, 2).reshape(o * s * s, c * s * s, p_n, q_n)
    b = bias.repeat_interleave(s * s) if bias is not None else None
    y = F.conv2d(xs, big, b)  # [n, o*s*s, hc, wc]
    hc, wc = y.shape[-2:]
    y = y.view(n, o, s, s, hc, wc).permute(0, 1, 4, 2, 5, 3).reshape(n, o, hc * s, wc * s)  # pixel_shuffle
    return y[:, :, :ho, :wo].contiguous() if (hc * s, wc * s) != (ho, wo) else y


def _input_grad(gy: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, padding=padding)``: the convolution of ``gy``, zero-padded
    by k-1-padding, with the flipped, transposed kernel (one output channel when x has one)."""
    kh, kw = weight.shape[-2:]
    return space_to_depth_conv2d(gy, weight.flip(2, 3).transpose(0, 1),
                                 padding=(kh - 1 - padding[0], kw - 1 - padding[1]))


class _OneInputChannelConv(torch.autograd.Function):
    """oneDNN forward and weight gradient; input gradient as a space-to-depth convolution."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.has_bias = padding, b is not None
        return F.conv2d(x, w, b, padding=padding)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gy = gy.contiguous()
        gw = gb = gx = None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            _, gw, gb = torch.ops.aten.convolution_backward(
                gy, x, w, [w.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding), [1, 1],
                False, [0, 0], 1, [False, bool(ctx.needs_input_grad[1]), bool(ctx.has_bias and ctx.needs_input_grad[2])],
            )
        if ctx.needs_input_grad[0]:
            gx = _input_grad(gy, w, ctx.padding)
        return gx, gw, gb, None


class SingleChannelConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` with one input or one output channel, faster to train on CPU.

    Same constructor, parameters and state-dict keys as ``nn.Conv2d``; see the module docstring
    for when the faster path is taken (otherwise this is ``nn.Conv2d.forward``).

    Raises:
        ValueError: neither ``in_channels`` nor ``out_channels`` is 1.
    """

    def __init__(self, in_channels: int, out_channels: int, *args: Any, **kwargs: Any) -> None:
        if in_channels != 1 and out_channels != 1:
            raise ValueError(
                f"SingleChannelConv2d needs in_channels == 1 or out_channels == 1, got {in_channels} -> "
                f"{out_channels}; use nn.Conv2d"
            )
        super().__init__(in_channels, out_channels, *args, **kwargs)
        self._fast_ok = (
            tuple(self.stride) == (1, 1) and tuple(self.dilation) == (1, 1) and self.groups == 1
            and self.padding_mode == "zeros" and not isinstance(self.padding, str)
            and min(self.kernel_size) >= MIN_KERNEL
        )

    def _use_fast_path(self, x: torch.Tensor) -> bool:
        return (
            _enabled and self._fast_ok and x.ndim == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and self.weight.dtype == torch.float32 and torch.is_grad_enabled()
            and not autocast_on_cpu()
            and (x.requires_grad if self.out_channels != 1 else (x.requires_grad or self.weight.requires_grad))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_fast_path(x):
            return super().forward(x)
        pad = (int(self.padding[0]), int(self.padding[1]))
        if self.out_channels == 1:
            return space_to_depth_conv2d(x, self.weight, self.bias, padding=pad)
        return _OneInputChannelConv.apply(x, self.weight, self.bias, pad)
