"""cmedl: cross-modality educed distillation for lung tumour segmentation on CT and CBCT.

Layers, in pipeline order (see docs/architecture.md):

- :mod:`cmedl.io`          volumes (NIfTI/NRRD/MHA/DICOM) and RTSTRUCT import
- :mod:`cmedl.data`        manifests, synthetic phantoms, preprocessing, slice datasets
- :mod:`cmedl.nets`        segmentation and translation networks
- :mod:`cmedl.losses`      Dice, adversarial, cycle, contextual and hint losses
- :mod:`cmedl.methods`     training methods (``cmedl``, ``ct-only``, ...)
- :mod:`cmedl.training`    configs, trainer, checkpoints
- :mod:`cmedl.inference`   slice-wise segmentation and translation of whole volumes
- :mod:`cmedl.evaluation`  metrics, statistics, evaluation of folders of masks
- :mod:`cmedl.cli`         the ``cmedl`` command
"""

__version__ = "0.1.0"
