"""Losses of the CMEDL papers, as plain torch functions plus thin ``nn.Module`` wrappers.

* :func:`soft_dice_loss` / :class:`SoftDiceLoss`: sigmoid + soft Dice per sample, with a per-sample
  label mask (teacher on unlabelled MRI): L_seg^CT, L_seg^rM, L_seg^pM (CT paper eq. 1).
* :func:`gan_loss` / :class:`GANLoss`: adversarial loss, ``"lsgan"`` (default) or ``"bce"`` (eq. 5).
* :func:`cycle_loss` / :class:`CycleLoss`: mean L1 cycle consistency (eq. 6).
* :func:`contextual_loss` / :class:`ContextualLoss`: Mechrez et al. contextual loss with cosine
  distances on (VGG19) features, memory-bounded by position sampling (eqs. 3-4).
* :func:`hint_loss` / :class:`HintLoss`: student/teacher feature matching, squared L2 normalised per
  element and summed over layers (eq. 2).

None of them depends on :mod:`cmedl.nets`; networks enter as tensors or callables. All return float32.
"""

from cmedl.losses.adversarial import GAN_MODES, GANLoss, gan_loss
from cmedl.losses.contextual import (
    DEFAULT_CX_LAYERS,
    ContextualLoss,
    contextual_loss,
    contextual_similarity,
)
from cmedl.losses.cycle import CycleLoss, cycle_loss
from cmedl.losses.dice import SoftDiceLoss, dice_of_volume, soft_dice_loss
from cmedl.losses.hint import HintLoss, hint_loss

__all__ = [
    "DEFAULT_CX_LAYERS",
    "GAN_MODES",
    "ContextualLoss",
    "CycleLoss",
    "GANLoss",
    "HintLoss",
    "SoftDiceLoss",
    "contextual_loss",
    "contextual_similarity",
    "cycle_loss",
    "gan_loss",
    "hint_loss",
    "dice_of_volume",
    "soft_dice_loss",
]
