"""The kinds of training batch a method can ask for (:class:`BatchKind`).

A method declares one kind; :func:`cmedl.training.data.build_training_data` builds the datasets of
that kind from the cases :func:`cmedl.data.selection.select_cases` picked. Every kind's tensors are
float32, labels in {0, 1}:

- ``labelled-slices``: 2D patches of the student modality, ``{"image", "label"}`` ``[B, 1, H, W]``
  (:class:`cmedl.data.datasets.SliceDataset`).
- ``unpaired-slices``: a student-modality patch and an MRI patch of *another* patient,
  ``{"ct", "ct_label", "mr", "mr_label", "mr_has_label"}`` (:class:`cmedl.data.datasets.UnpairedDataset`).
- ``paired-oracle-slices``: ``unpaired-slices`` plus ``"ct_paired_mr"``, the same window of the
  student case's own MRI on its grid (the phantom's paired-oracle control arm, ``cmedl-oracle``;
  :mod:`cmedl.data.paired`).
- ``labelled-patches-3d``: 3D patches ``{"image", "label"}`` ``[B, 1, d, h, w]``
  (:class:`cmedl.data.datasets3d.PatchDataset3D`).
- ``guided-crops-3d``: the teacher-student paper's teacher crops, centred on one lesion of an
  expertly labelled case (random jitter), ``{"image", "label", "box"}`` ``[B, 1, d, h, w]`` where
  ``box`` is the union of the lesion's axial boxes (:class:`cmedl.data.datasets_ts.GuidedCropDataset`).
- ``strong-patches-3d``: 3D patches of the expertly labelled cases only, ``{"image", "label", "box",
  "pseudo"}`` (``box``: the axial box mask of the label; the student baseline);
- ``mixed-patches-3d``: the same from expert and teacher (pseudo) labelled cases (the students;
  :class:`cmedl.data.datasets_ts.BoxPatchDataset3D`).

Adding a kind (e.g. box-annotated volumes for a box-guided teacher) means one member here, its
case needs in :func:`cmedl.data.selection.select_cases` and its dataset builder in
:mod:`cmedl.training.data`.
"""

from __future__ import annotations

from enum import Enum


class BatchKind(str, Enum):
    """What one training batch holds; see the module docstring."""

    LABELLED_SLICES = "labelled-slices"
    UNPAIRED_SLICES = "unpaired-slices"
    PAIRED_ORACLE_SLICES = "paired-oracle-slices"
    LABELLED_PATCHES_3D = "labelled-patches-3d"
    GUIDED_CROPS_3D = "guided-crops-3d"
    STRONG_PATCHES_3D = "strong-patches-3d"
    MIXED_PATCHES_3D = "mixed-patches-3d"

    @property
    def dims(self) -> int:
        """Spatial dimensions of the images (2 or 3): the networks trained on them must match."""
        return 2 if self in (BatchKind.LABELLED_SLICES, BatchKind.UNPAIRED_SLICES, BatchKind.PAIRED_ORACLE_SLICES) else 3

    @property
    def expert_labels_only(self) -> bool:
        """Whether only expert labels train (teacher-made ``pseudo`` labels are left out)."""
        return self in (BatchKind.GUIDED_CROPS_3D, BatchKind.STRONG_PATCHES_3D)

    @property
    def needs_mr(self) -> bool:
        """Whether the batches hold MRI of other patients (the teacher's modality)."""
        return self in (BatchKind.UNPAIRED_SLICES, BatchKind.PAIRED_ORACLE_SLICES)

    def __str__(self) -> str:
        return self.value
