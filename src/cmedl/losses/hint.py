"""Hint (feature distillation) loss between the CT student and the MRI teacher.

CT paper eq. 2: ``L_hint = sum_i || phi_CT^i(x_c) - phi_MR^i(G_{CT->MR}(x_c)) ||_F^2`` over the hint
layers i (by default the last two decoder feature maps of identical U-Nets). The squared Frobenius
norm grows with batch size, channels and pixels, which would tie lambda_hint = 1 to the network width
and crop size; we therefore normalise it PER ELEMENT:

    L_hint = sum_l mean_{b,c,h,w} (s_l - t_l)^2          (= sum_l ||s_l - t_l||_F^2 / numel(s_l))

i.e. the mean squared error of each layer pair, summed over layers. A constant difference c in every
element gives c^2 per layer, whatever the feature-map size.

Gradients: the papers' S step minimises L_hint over both segmentation networks ("mutual" hints, the
default ``detach_teacher=False``), and their G step minimises it over the CT->MRI generator, whose
only route to L_hint is through the teacher's input (the pMRI). With ``detach_teacher=True`` the
teacher features are detached (one-way FitNets-style distillation): the hint moves only the student,
and it then gives the generator no gradient either; a method that wants "teacher frozen but
generator guided" must instead freeze the teacher's parameters and keep ``detach_teacher=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from cmedl.errors import ConfigError

__all__ = ["HintLoss", "hint_loss"]


def hint_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    detach_teacher: bool = False,
) -> Tensor:
    """Per-element-normalised squared L2 distance between student and teacher hint features.

    Args:
        student_feats: student feature maps, one per hint layer, each ``[B, C_l, H_l, W_l]``
            (any shape; computed on the CT batch).
        teacher_feats: teacher feature maps for the same layers and the same shapes (computed on
            the pMRI of the same CT batch).
        detach_teacher: stop the hint gradient from flowing into the teacher (and into whatever
            produced its input, e.g. the CT->MRI generator).

    Returns:
        float32 scalar ``sum_l mean((s_l - t_l)^2)``.

    Raises:
        ConfigError: no layers, a different number of layers, or a shape mismatch (all shapes listed).
    """
    students, teachers = list(student_feats), list(teacher_feats)
    shapes = f"student {[tuple(s.shape) for s in students]}, teacher {[tuple(t.shape) for t in teachers]}"
    if not students:
        raise ConfigError("hint loss: no hint features were given")
    if len(students) != len(teachers) or any(
        s.shape != t.shape for s, t in zip(students, teachers, strict=False)
    ):
        raise ConfigError(
            f"hint loss: student and teacher hint features differ in number or shape ({shapes}); "
            "student and teacher must be the same architecture with the same hint_layers"
        )
    total: Tensor | None = None
    for s, t in zip(students, teachers, strict=True):
        if detach_teacher:
            t = t.detach()
        term = F.mse_loss(s.float(), t.float())
        total = term if total is None else total + term
    assert total is not None
    return total


class HintLoss(nn.Module):
    """Module form of :func:`hint_loss`; ``detach_teacher`` is fixed at construction."""

    def __init__(self, detach_teacher: bool = False) -> None:
        super().__init__()
        self.detach_teacher = bool(detach_teacher)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        return hint_loss(student_feats, teacher_feats, detach_teacher=self.detach_teacher)

    def extra_repr(self) -> str:
        return f"detach_teacher={self.detach_teacher}"
