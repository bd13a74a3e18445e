"""3D convolutions that stay on oneDNN for single-volume batches on the CPU.

PyTorch picks the CPU backend of a float32 convolution by a size heuristic
(``ConvParams::use_mkldnn`` in ATen): a 3x3x3 convolution goes to oneDNN only when the batch holds more
than one sample or ``N * C * D * H > 20480`` -- the last spatial dimension is not counted. Below that it
runs ``slow_conv3d`` (im2col + GEMM), which on the project's 2-core reference machine is 5-8x slower
than oneDNN per sample, forward and backward (``torch.profiler``; a [1, 8, 32, 64, 64] 3x3x3
convolution took 190 ms forward + backward against 37 ms per sample at batch 2). Batch-1 3D training
(the teacher-student paper's networks: batch 1 with accumulated gradients) and sliding-window inference
hit it on almost every layer: a cpu-ts student step spent 93 % of its time there.

:func:`conv3d` therefore splits a single volume into two halves along its longest spatial axis, each
with the halo the kernel needs, runs them as a batch of two (which oneDNN takes) and joins the halves.
The result equals :func:`torch.nn.functional.conv3d` to float32 rounding, gradients included (autograd
sees only pad, slice, cat and conv3d); the halo adds ``(k - 1) / (L / 2)`` of the arithmetic (6 % on a
64-voxel axis). The split is used only where the heuristic would fall back: CPU, float32 without
autocast, batch 1, zero padding given as integers, an axis with at least two outputs; everything else
(CUDA, batches, bf16) is the plain convolution. :class:`Conv3d` is a drop-in :class:`torch.nn.Conv3d`
(same parameters and state-dict keys). ``cmedl.nets.fastconv.fast_path_disabled()`` turns the split off
(A/B timing, FLOP counting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmedl.nets.fastconv import autocast_on_cpu, fast_path_enabled

#: ATen's oneDNN threshold for a batch of one: ``N * C * D * H`` above this already uses oneDNN
ONEDNN_MIN_NCDH = 20480
#: volumes of fewer voxels stay plain (a [1, 128, 2, 4, 4] 3x3x3 convolution: 1.7 ms plain, 2.0 ms split)
MIN_VOXELS = 128


def _as_triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    a, b, c = value
    return int(a), int(b), int(c)


def needs_split(x: torch.Tensor, padding: object) -> bool:
    """Whether ``conv3d(x, ...)`` would run ATen's slow CPU path and the split applies."""
    return (fast_path_enabled() and x.device.type == "cpu" and x.dim() == 5 and x.shape[0] == 1
            and x.dtype == torch.float32 and not isinstance(padding, str) and not autocast_on_cpu()
            and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= ONEDNN_MIN_NCDH
            and x.shape[2] * x.shape[3] * x.shape[4] >= MIN_VOXELS)


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] = 0,
           dilation: int | tuple[int, ...] = 1, groups: int = 1) -> torch.Tensor:
    """:func:`torch.nn.functional.conv3d` (zero padding), split in two along an axis where that is faster."""
    if not needs_split(x, padding):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    st, pad, dil = _as_triple(stride), _as_triple(padding), _as_triple(dilation)
    extent = [dil[i] * (weight.shape[2 + i] - 1) + 1 for i in range(3)]
    out = [(x.shape[2 + i] + 2 * pad[i] - extent[i]) // st[i] + 1 for i in range(3)]
    axis = max(range(3), key=lambda i: (out[i] >= 2, x.shape[2 + i]))
    if out[axis] < 2:
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    dim, n_out = 2 + axis, out[axis]
    half = (n_out + 1) // 2  # both chunks give `half` outputs; an odd count overlaps by one, dropped below
    length = (half - 1) * st[axis] + extent[axis]
    pads = [0] * 6
    pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = pad[axis]  # F.pad lists the last axis first
    xp = F.pad(x, pads) if pad[axis] else x
    start2 = (n_out - half) * st[axis]
    both = torch.cat([xp.narrow(dim, 0, length), xp.narrow(dim, start2, length)], dim=0)
    inner = tuple(0 if i == axis else pad[i] for i in range(3))
    y = F.conv3d(both, weight, bias, st, inner, dil, groups)
    overlap = 2 * half - n_out
    return torch.cat([y[:1], y[1:].narrow(dim, overlap, half - overlap)], dim=dim)


class Conv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d` whose single-volume CPU calls use :func:`conv3d` (see the module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or not needs_split(x, self.padding):
            return super().forward(x)
        return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
