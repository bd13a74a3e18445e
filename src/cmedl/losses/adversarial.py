"""Adversarial (GAN) losses for the CycleGAN discriminators and generators.

The papers write the adversarial loss in its log-likelihood form (CT paper eq. 5); CycleGAN, which
the papers build on, trains it in least-squares form (LSGAN), which is more stable. Both are offered:

* ``"lsgan"``: ``mean((D(x) - 1)^2)`` for real targets, ``mean(D(x)^2)`` for fake targets
  (``D`` outputs raw scores, no sigmoid);
* ``"bce"``: ``BCEWithLogits(D(x), 1 or 0)``, i.e. the papers' ``log D(x) + log(1 - D(G(x)))``
  with the generator's usual non-saturating form (the generator step asks for ``target_is_real=True``).

``prediction`` is the discriminator's raw output of any shape (PatchGAN: ``[B, 1, h, w]``, one score
per 70x70 patch); the loss is the mean over all its elements, computed in float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmedl.errors import ConfigError, did_you_mean

__all__ = ["GAN_MODES", "GANLoss", "gan_loss"]

GANMode = Literal["lsgan", "bce"]
GAN_MODES: tuple[str, ...] = ("lsgan", "bce")


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ConfigError(did_you_mean(mode, GAN_MODES, what="GAN loss mode"))


def gan_loss(
    prediction: Tensor,
    target_is_real: bool,
    mode: GANMode = "lsgan",
    *,
    real_label: float = 1.0,
    fake_label: float = 0.0,
) -> Tensor:
    """Adversarial loss of discriminator scores ``prediction`` against an all-real/all-fake target.

    Args:
        prediction: raw discriminator output (logits / scores), any shape.
        target_is_real: ``True`` to push scores towards ``real_label`` (discriminator on real images,
            generator on fakes), ``False`` towards ``fake_label`` (discriminator on fakes).
        mode: ``"lsgan"`` (mean squared error) or ``"bce"`` (binary cross-entropy with logits).
        real_label, fake_label: target values (1 and 0; e.g. 0.9 for one-sided label smoothing).

    Returns:
        float32 scalar.

    Raises:
        ConfigError: unknown ``mode``.
    """
    _check_mode(mode)
    pred = prediction.float()
    target = torch.full_like(pred, real_label if target_is_real else fake_label)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)


class GANLoss(nn.Module):
    """``GANLoss(mode)(prediction, target_is_real) -> scalar``; see :func:`gan_loss`."""

    def __init__(
        self, mode: GANMode = "lsgan", real_label: float = 1.0, fake_label: float = 0.0
    ) -> None:
        super().__init__()
        _check_mode(mode)
        self.mode: GANMode = mode
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)

    def forward(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        return gan_loss(
            prediction,
            target_is_real,
            self.mode,
            real_label=self.real_label,
            fake_label=self.fake_label,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, real_label={self.real_label}, fake_label={self.fake_label}"
