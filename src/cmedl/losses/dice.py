"""Soft Dice loss for binary tumour segmentation, with per-sample label masks.

The papers train every segmentation network (student S_CT, teacher S_MR on real MRI and on pMRI)
with a Dice loss (CT paper eq. 1: L_seg = L_seg^rM + L_seg^pM + L_seg^CT). For one sample b with
probabilities ``p = sigmoid(logits[b])`` and binary target ``t = target[b]``, summed over all of the
sample's elements (C, H, W) (or (C, D, H, W)):

    dice_b = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)
    loss_b = 1 - dice_b

``smooth`` (default 1, "Laplace smoothing") is added to numerator and denominator: it keeps the loss
defined for slices without tumour (empty target: ``loss_b = sum(p) / (sum(p) + smooth)``, so an
empty prediction scores ~0 and every predicted pixel is penalised) and damps the gradient when both
prediction and target are tiny. Larger values make the loss more lenient on small structures.

Why not ``monai.losses.DiceLoss``: with ``sigmoid=True, smooth_nr=smooth_dr=smooth,
reduction="none"`` it gives the same per-sample numbers for one channel (the tests check that),
but it reduces per (sample, channel) rather than over (C, H, W) together, and the part we actually
need, dropping samples without labels (unlabelled MRI) while keeping a graph connection when a
batch has none, sits outside it anyway. The formula is four tensor ops, so it is written here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["SoftDiceLoss", "dice_of_volume", "soft_dice_loss"]

Reduction = Literal["mean", "sum", "none", "batch"]


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    sample_mask: Tensor | None = None,
    smooth: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft Dice loss ``1 - Dice(sigmoid(logits), target)`` computed per sample.

    Args:
        logits: raw network outputs ``[B, C, H, W]`` (or ``[B, C, D, H, W]``), any float dtype;
            computed in float32 (safe under bf16 autocast).
        target: binary (or soft) labels in [0, 1], same shape as ``logits``.
        sample_mask: optional bool ``[B]``; ``False`` marks samples without a label (e.g. an
            unlabelled MRI), which are left out of the loss and get no gradient.
        smooth: additive smoothing in numerator and denominator (see module docstring).
        reduction: ``"mean"`` over labelled samples, ``"sum"`` over labelled samples, ``"none"``
            for the per-sample losses ``[B]`` (masked samples are 0), or ``"batch"``: one Dice of
            the pooled sums over all labelled samples (nnU-Net's "batch Dice").

    Returns:
        A float32 scalar (``"mean"``/``"sum"``) or ``[B]`` (``"none"``). When no sample is labelled
        the result is exactly 0 and still connected to ``logits``' graph, so ``backward()`` works
        and parameters get zero gradients rather than ``None``.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"soft_dice_loss: logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}"
        )
    if logits.dim() < 2:
        raise ValueError(f"soft_dice_loss: expected [B, C, ...], got shape {tuple(logits.shape)}")
    if reduction not in ("mean", "sum", "none", "batch"):
        raise ValueError(
            f"soft_dice_loss: unknown reduction {reduction!r} (choices: mean, sum, none, batch)"
        )
    batch = logits.shape[0]
    if sample_mask is not None:
        sample_mask = torch.as_tensor(sample_mask, device=logits.device).to(torch.bool).reshape(-1)
        if sample_mask.numel() != batch:
            raise ValueError(
                f"soft_dice_loss: sample_mask has {sample_mask.numel()} entries for batch size {batch}"
            )

    prob = torch.sigmoid(logits.float()).flatten(1)  # [B, C*H*W]
    tgt = target.float().flatten(1)
    inter = (prob * tgt).sum(dim=1)
    denom = prob.sum(dim=1) + tgt.sum(dim=1)
    if reduction == "batch":
        # one Dice over all labelled samples pooled ("batch Dice"): false positives on tumour-free
        # patches share the denominator with the tumour patches, so they keep a gradient (per-sample
        # Dice saturates on empty targets: d/dp of sum(p)/(sum(p)+smooth) vanishes as sum(p) grows).
        w = torch.ones_like(inter) if sample_mask is None else sample_mask.to(inter.dtype)
        pooled = 1.0 - (2.0 * (w * inter).sum() + smooth) / ((w * denom).sum() + smooth)
        return pooled * (w.sum() > 0).to(pooled.dtype)
    per_sample = 1.0 - (2.0 * inter + smooth) / (denom + smooth)  # [B]

    if sample_mask is None:
        if reduction == "none":
            return per_sample
        return per_sample.mean() if reduction == "mean" else per_sample.sum()

    # torch.where selects the labelled samples without a device sync (no Python branch on the
    # number of labelled samples); unselected entries get exactly zero gradient. With no labelled
    # sample the result is an exact 0 that is still connected to ``logits``.
    masked = torch.where(sample_mask, per_sample, per_sample.new_zeros(()))
    if reduction == "none":
        return masked
    total = masked.sum()
    if reduction == "sum":
        return total
    return total / sample_mask.sum().clamp_min(1).to(total.dtype)


class SoftDiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss` (``forward(logits, target, sample_mask=None)``)."""

    def __init__(self, smooth: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.smooth = float(smooth)
        self.reduction: Reduction = reduction

    def forward(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> Tensor:
        return soft_dice_loss(
            logits, target, sample_mask=sample_mask, smooth=self.smooth, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, reduction={self.reduction!r}"


def dice_of_volume(prob: Tensor, target: Tensor, smooth: float = 1e-6) -> tuple[float, float]:
    """``(soft Dice loss, hard Dice)`` of one whole probability map against its binary label.

    The soft loss is ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` of the probabilities
    themselves (no sigmoid: the map comes from a network run over the whole volume), computed in
    float64; the hard Dice thresholds at ``p > 0.5`` and is 1 when prediction and label are both
    empty. Training-time validation scores every validation volume with it, so that false positives
    anywhere in the scan count.
    """
    if prob.shape != target.shape:
        raise ValueError(f"dice_of_volume: prob shape {tuple(prob.shape)} != target shape {tuple(target.shape)}")
    p, t = prob.double(), (target > 0).double()
    soft = 1.0 - float((2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
    hard = (p > 0.5).double()
    denom = float(hard.sum() + t.sum())
    return soft, (2.0 * float((hard * t).sum()) / denom) if denom > 0 else 1.0
