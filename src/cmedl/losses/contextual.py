"""Contextual loss (Mechrez, Talmi & Zelnik-Manor, ECCV 2018) on deep features, cosine version.

The papers add it to CycleGAN so that the pMRI keeps the CT's structures although CT and MRI are
unpaired (CT paper eqs. 3-4): features of the generated image ``x`` (pMRI) and of a target image ``y``
(a real MRI of another patient) are compared as *sets* of feature vectors, ignoring positions.

For one sample, with ``x_i`` (i = 1..N) and ``y_j`` (j = 1..M) the C-dimensional feature vectors at
each spatial position:

1. centre both by the target's mean feature ``mu_y = mean_j y_j`` (per sample, over positions);
2. L2-normalise every vector along channels;
3. cosine distances ``d_ij = 1 - <x_i, y_j>``;
4. relative distances ``d~_ij = d_ij / (min_k d_ik + eps)``;
5. ``w_ij = exp((1 - d~_ij) / h)`` with bandwidth ``h`` and ``CX_ij = w_ij / sum_k w_ik``
   (computed as a softmax over k of ``-d~_ik / h``, which is the same number and cannot overflow);
6. ``CX(x, y) = (1/M) sum_j max_i CX_ij`` and ``L_CX = -log CX(x, y)``.

CX is in ``[1/M, 1]``, so the loss lies in ``[0, log M]``; ``CX(x, x)`` is 1 up to ``exp(-1/(h*eps))``
terms when all feature vectors are distinct. The value does not change when the positions of ``x``
(or of ``y``) are permuted, which is what makes it usable on unaligned images. The loss is averaged
over the batch and then over the feature layers.

Differences from the authors' TensorFlow code, on purpose: the target mean is taken per sample
(theirs is over the whole batch), so a sample's loss does not depend on the other samples; the
minimum distance is clamped at 0 before adding ``eps`` so rounding (``<x, x>`` slightly above 1)
cannot make the denominator vanish. Everything runs in float32 with autocast disabled: in bf16 the
cosine distances of near-identical vectors (the quantity that matters) are pure rounding noise.

Memory and speed. The ``N x M`` affinity matrix is needed in full (step 6 needs every ``CX_ij``), but
not all at once and not kept for backward: steps 3-6 run as one autograd Function
(:class:`_ContextualSimilarityFn`) that handles one sample at a time with in-place operations (one
``N x M`` float32 buffer in forward) and saves only the normalised features, ``N`` row
log-sum-exps and ``M`` column maxima; its hand-written backward recomputes the matrix (one extra
``C x N x M`` matmul) and needs two buffers. Plain autograd over the same formula
(:func:`reference_contextual_similarity`) keeps ~6 matrices per sample alive and spends most of its
time in elementwise passes and ``amin``/``amax`` backward. At the papers' size (256 px input; VGG19
conv3_3/conv3_4 at 64x64 = 4096 positions, conv4_1 at 32x32x512) one matrix is 4096^2 * 4 B =
64 MiB; for a 64x64x256 layer at batch 2, forward + backward peaks at ~140-160 MiB here against
~790 MiB for plain autograd, with 1.6x less CPU time (``benchmarks/bench_contextual.py``), and the
peak does not grow with the batch size or the number of layers.

Larger maps would still cost ``positions^2``: when a map has more than ``max_positions`` positions
(default 4096, i.e. exact at the papers' size) we use ``max_positions`` positions drawn uniformly at
random without replacement, independently for ``x`` and ``y`` and per layer (the same positions for
every sample in the batch), from ``generator`` if given, else from torch's global CPU RNG (so
``torch.manual_seed`` makes it reproducible). Sampling bounds memory by ``max_positions^2`` per
sample and gives a stochastic estimate of the set-to-set similarity (biased low: a sampled ``y_j``
may lose its best match). Chunking rows instead would stay exact and bound memory too, but the time
stays quadratic in the number of positions, which is what hurts at large sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmedl.errors import ConfigError, did_you_mean

__all__ = [
    "DEFAULT_CX_LAYERS",
    "ContextualLoss",
    "contextual_loss",
    "contextual_similarity",
]

#: VGG19 layers of the papers ("Conv7, Conv8, Conv9": 64x64x256, 64x64x256, 32x32x512 at 256 px).
DEFAULT_CX_LAYERS: tuple[str, ...] = ("conv3_3", "conv3_4", "conv4_1")

FeatureExtractor = Callable[[Tensor], Mapping[str, Tensor]]


def _as_sets(feats: Tensor, name: str) -> Tensor:
    """``[B, C, H, W]`` or ``[B, C, N]`` -> ``[B, C, N]`` float32 (or float64)."""
    if feats.dim() == 4:
        feats = feats.flatten(2)
    elif feats.dim() != 3:
        raise ValueError(
            f"contextual loss: {name} features must be [B, C, H, W] or [B, C, N], "
            f"got shape {tuple(feats.shape)}"
        )
    # float64 is kept (gradient checks); lower precisions are computed in float32.
    return feats if feats.dtype in (torch.float32, torch.float64) else feats.float()


def _sample_positions(
    feats: Tensor, max_positions: int | None, generator: torch.Generator | None
) -> Tensor:
    """Keep at most ``max_positions`` random positions (last axis) of ``[B, C, N]`` features."""
    n = feats.shape[-1]
    if max_positions is None or n <= max_positions:
        return feats
    rng_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(n, generator=generator, device=rng_device)[:max_positions]
    return feats.index_select(-1, idx.to(feats.device))


def contextual_similarity(
    x_feats: Tensor,
    y_feats: Tensor,
    bandwidth: float = 0.5,
    *,
    eps: float = 1e-5,
    max_positions: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Contextual similarity ``CX(x, y)`` per sample (see the module docstring for the formula).

    Args:
        x_feats: features of the generated images, ``[B, C, H, W]`` or ``[B, C, N]``.
        y_feats: features of the target images, ``[B, C, H', W']`` or ``[B, C, M]`` (the number of
            positions may differ from ``x``; batch size and channels must match).
        bandwidth: ``h`` in ``w_ij = exp((1 - d~_ij) / h)``; smaller is sharper.
        eps: added to the row minimum of the cosine distances.
        max_positions: if a map has more positions, that many are sampled at random
            (``None``: always exact).
        generator: RNG for the sampling (``None``: torch's global CPU RNG).

    Returns:
        float32 ``[B]`` in ``[1/M, 1]``.
    """
    x = _as_sets(x_feats, "generated")
    y = _as_sets(y_feats, "target")
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(
            "contextual loss: generated and target features need the same batch size and channels, "
            f"got {tuple(x_feats.shape)} and {tuple(y_feats.shape)}"
        )
    if bandwidth <= 0:
        raise ValueError(f"contextual loss: bandwidth must be > 0, got {bandwidth}")

    with torch.autocast(device_type=x.device.type, enabled=False):
        mu_y = y.mean(dim=2, keepdim=True)  # [B, C, 1], over all target positions
        x = _sample_positions(x, max_positions, generator)
        y = _sample_positions(y, max_positions, generator)
        x = F.normalize(x - mu_y, dim=1)
        y = F.normalize(y - mu_y, dim=1)
        return _ContextualSimilarityFn.apply(x, y, float(bandwidth), float(eps))


def reference_contextual_similarity(
    x_feats: Tensor, y_feats: Tensor, bandwidth: float = 0.5, eps: float = 1e-5
) -> Tensor:
    """Plain-autograd version of :func:`contextual_similarity` (no sampling), ``[B]``.

    Same formula in differentiable batched torch ops: the reference that the hand-written backward
    is tested against, and the baseline of ``benchmarks/bench_contextual.py``. It keeps ~6
    ``B x N x M`` tensors alive; do not use it for training.
    """
    x, y = _as_sets(x_feats, "generated"), _as_sets(y_feats, "target")
    mu_y = y.mean(dim=2, keepdim=True)
    xn, yn = F.normalize(x - mu_y, dim=1), F.normalize(y - mu_y, dim=1)
    dist = 1.0 - torch.bmm(xn.transpose(1, 2), yn)
    rel = dist / (dist.amin(dim=2, keepdim=True).clamp_min(0.0) + eps)
    cx = torch.softmax((1.0 - rel) / bandwidth, dim=2)
    return cx.amax(dim=1).mean(dim=1)


def _log_cx(
    x: Tensor, y: Tensor, bandwidth: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Steps 3-5 for one sample in one ``[N, M]`` buffer: ``z_ik = -d~_ik / h`` (in place).

    ``x`` ``[C, N]``, ``y`` ``[C, M]``: centred unit-norm feature vectors. Returns ``z`` (``CX_ij =
    exp(z_ij - lse_i)``), ``scale_i = 1 / (h r_i)`` with ``r_i = max(min_k d_ik, 0) + eps`` ``[N, 1]``,
    the nearest target ``k*(i) = argmin_k d_ik`` ``[N]``, and whether the clamp passed the minimum
    (``min_k d_ik > 0``) ``[N]``.
    """
    z = torch.mm(x.t(), y)  # s_ik = <x_i, y_k> = 1 - d_ik
    smax, kmin = z.max(dim=1, keepdim=True)
    scale = ((1.0 - smax).clamp_min(0.0) + eps).mul_(bandwidth).reciprocal_()
    z.sub_(1.0).mul_(scale)  # (s - 1) / (h r) = -d~ / h
    return z, scale, kmin.squeeze(1), smax.squeeze(1) < 1.0


class _ContextualSimilarityFn(torch.autograd.Function):
    """``CX(x, y)`` ``[B]`` from centred unit-norm features ``x`` ``[B, C, N]``, ``y`` ``[B, C, M]``.

    Written by hand (instead of plain autograd) to bound memory (see the module docstring): samples
    are processed one at a time, forward uses one ``N x M`` buffer, and only the features, the
    row log-sum-exps ``[N]`` and the column maxima ``[M]`` are saved; backward recomputes ``z``.

    Backward, for one sample with ``g = dL/dCX / M``, ``P = CX_ij``, column argmax ``i*(j)`` and
    ``k*(i)`` the row argmin of ``d``: ``dL/dP_ij = g [i = i*(j)]``; softmax:
    ``dz = P (dL/dP - a)`` with ``a_i = g sum_{j: i*(j) = i} P_ij``; through ``z = (s - 1) / (h r)``:
    ``ds_ik = dz_ik / (h r_i) + [k = k*(i)] [min_k d_ik > 0] (sum_l dz_il z_il) / r_i``;
    then ``dx = y ds^T`` and ``dy = x ds``, with the row scaling and the one-entry-per-row term
    applied to the small ``[C, N]`` / ``[C, M]`` products. Tested against autograd and ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, bandwidth: float, eps: float) -> Tensor:  # type: ignore[override]
        batch, _, n = x.shape
        m = y.shape[2]
        col_val = x.new_empty(batch, m)
        col_idx = torch.empty(batch, m, dtype=torch.long, device=x.device)
        lse = x.new_empty(batch, n, 1)
        for b in range(batch):  # one sample at a time bounds memory by one N x M buffer
            z, _, _, _ = _log_cx(x[b], y[b], bandwidth, eps)
            lse[b] = torch.logsumexp(z, dim=1, keepdim=True)
            log_p, col_idx[b] = z.sub_(lse[b]).max(dim=0)  # log max_i CX_ij and argmax i*(j)
            col_val[b] = log_p.exp()
            del z
        ctx.save_for_backward(x, y, lse, col_val, col_idx)
        ctx.bandwidth, ctx.eps = bandwidth, eps
        return col_val.mean(dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cx: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        x, y, lse, col_val, col_idx = ctx.saved_tensors
        h, eps = ctx.bandwidth, ctx.eps
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_y = torch.zeros_like(y) if need_y else None
        batch, _, n = x.shape
        m = y.shape[2]
        cols = torch.arange(m, device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            for b in range(batch):
                g = grad_cx[b].to(x.dtype) / m
                z, scale, kmin, passed = _log_cx(x[b], y[b], h, eps)
                dz = torch.sub(z, lse[b]).exp_()  # P = CX_ij
                a = torch.zeros(n, dtype=x.dtype, device=x.device)
                a.index_add_(0, col_idx[b], col_val[b])
                dz.mul_((-g * a).unsqueeze(1))  # -P_ij a_i
                dz[col_idx[b], cols] += g * col_val[b]  # + P_ij dL/dP_ij (one entry per column)
                rowdot = torch.bmm(z.unsqueeze(1), dz.unsqueeze(2)).view(n)  # sum_l dz_il z_il
                del z
                # ds = scale * dz + e at (i, k*(i)), e_i = [passed] rowdot_i / r_i, 1/r = h scale
                e = passed.to(x.dtype) * rowdot * scale.squeeze(1) * h
                if grad_x is not None:
                    grad_x[b] = torch.mm(y[b], dz.t()).mul_(scale.t()) + y[b][:, kmin] * e
                if grad_y is not None:
                    grad_y[b] = torch.mm(x[b] * scale.t(), dz).index_add_(1, kmin, x[b] * e)
                del dz
        return grad_x, grad_y, None, None


def contextual_loss(
    x_feats: Tensor,
    y_feats: Tensor,
    bandwidth: float = 0.5,
    *,
    eps: float = 1e-5,
    max_positions: int | None = None,
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Contextual loss ``-log CX(x, y)`` on one layer's features (CT paper eq. 4).

    Arguments as :func:`contextual_similarity`. Returns the batch mean (float32 scalar), or the
    per-sample losses ``[B]`` with ``reduction="none"``. Gradients flow into both feature tensors
    (including through the row minimum and the target mean), as in the reference implementation.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"contextual loss: unknown reduction {reduction!r} (choices: mean, none)")
    per_sample = -torch.log(
        contextual_similarity(
            x_feats,
            y_feats,
            bandwidth,
            eps=eps,
            max_positions=max_positions,
            generator=generator,
        )
    )
    return per_sample.mean() if reduction == "mean" else per_sample


class ContextualLoss(nn.Module):
    """Contextual loss between generated and target images through a fixed feature extractor.

    ``forward(generated, target, generator=None)`` takes images ``[B, 1, H, W]`` in [-1, 1] (pMRI and
    real MRI of other patients; batch sizes must match, the pairing is arbitrary), passes each
    through ``feature_extractor`` and returns the float32 scalar ``mean over layers of
    contextual_loss(f_l(generated), f_l(target))``.

    The extractor maps a ``[B, 1, H, W]`` image in [-1, 1] to ``{layer_name: [B, C, h, w]}``; any
    conversion it needs (grey to 3 channels, ImageNet normalisation) is its job
    (``cmedl.nets.vgg.VGG19Features`` does it). If it is an ``nn.Module`` it is registered as a
    submodule (so ``.to(device)`` moves it), frozen (``requires_grad_(False)``) and kept in eval
    mode: the papers use a fixed ImageNet VGG. Target features are computed without autograd unless
    ``target`` requires grad, which halves the memory kept for backward.
    """

    def __init__(
        self,
        feature_extractor: FeatureExtractor,
        layers: Sequence[str] = DEFAULT_CX_LAYERS,
        bandwidth: float = 0.5,
        max_positions: int | None = 4096,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = (layers,)
        self.layers: tuple[str, ...] = tuple(layers)
        if not self.layers:
            raise ConfigError("contextual loss: at least one feature layer is required")
        if not bandwidth > 0:
            raise ConfigError(f"contextual loss: bandwidth must be > 0, got {bandwidth}")
        if max_positions is not None and max_positions < 1:
            raise ConfigError(
                f"contextual loss: max_positions must be >= 1 or None, got {max_positions}"
            )
        self.bandwidth = float(bandwidth)
        self.max_positions = max_positions
        self.eps = float(eps)
        self.feature_extractor = feature_extractor
        if isinstance(feature_extractor, nn.Module):
            feature_extractor.requires_grad_(False)
            feature_extractor.eval()

    def train(self, mode: bool = True) -> ContextualLoss:
        """Switch mode but keep a module extractor in eval mode (it is a fixed network)."""
        super().train(mode)
        if isinstance(self.feature_extractor, nn.Module):
            self.feature_extractor.eval()
        return self

    def _select(self, feats: Mapping[str, Tensor]) -> list[Tensor]:
        missing = [name for name in self.layers if name not in feats]
        if missing:
            raise ConfigError(did_you_mean(missing[0], feats.keys(), what="contextual-loss layer"))
        return [feats[name] for name in self.layers]

    def forward(
        self, generated: Tensor, target: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        if generated.shape[0] != target.shape[0]:
            raise ValueError(
                f"contextual loss: generated batch {tuple(generated.shape)} and target batch "
                f"{tuple(target.shape)} differ in size"
            )
        gen_feats = self._select(self.feature_extractor(generated))
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            tgt_feats = self._select(self.feature_extractor(target))
        losses = [
            contextual_loss(
                g,
                t,
                self.bandwidth,
                eps=self.eps,
                max_positions=self.max_positions,
                generator=generator,
            )
            for g, t in zip(gen_feats, tgt_feats, strict=True)
        ]
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, bandwidth={self.bandwidth}, "
            f"max_positions={self.max_positions}, eps={self.eps}"
        )
