"""Cycle-consistency loss (CT paper eq. 6): ``mean(|G_MC(G_CM(x)) - x|)``.

The papers write ``||G_{C->M->C}(x_c) - x_c||_1`` per image; like CycleGAN we use the mean absolute
error over all elements (batch, channels, pixels), so the value does not depend on the image size and
lambda_cyc = 10 keeps its CycleGAN meaning. The method adds the CT and MRI cycles.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CycleLoss", "cycle_loss"]


def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """Mean L1 distance between a twice-translated image and the original.

    Args:
        reconstructed: ``G_back(G_forward(original))``, e.g. ``[B, 1, H, W]`` in [-1, 1].
        original: the input image, same shape (gradients flow into it too if it requires grad).

    Returns:
        float32 scalar, ``mean(|reconstructed - original|)`` over all elements.
    """
    if reconstructed.shape != original.shape:
        raise ValueError(
            f"cycle_loss: reconstructed shape {tuple(reconstructed.shape)} "
            f"!= original shape {tuple(original.shape)}"
        )
    return F.l1_loss(reconstructed.float(), original.float())


class CycleLoss(nn.Module):
    """Module form of :func:`cycle_loss`."""

    def forward(self, reconstructed: Tensor, original: Tensor) -> Tensor:
        return cycle_loss(reconstructed, original)
