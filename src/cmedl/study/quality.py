"""pMRI quality of a trained translator: histogram KL of its pseudo-MRI against real MRI (papers, V-E).

Both sides are compared where the networks see them: the CT/CBCT test volumes are preprocessed as
the checkpoint's student input and translated on the working grid; the real MRI volumes are
preprocessed as the checkpoint's MRI input. Voxels inside each body mask are pooled into one
histogram per side over the normalised range [-1, 1] (:func:`cmedl.evaluation.translation.histogram_kl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cmedl.data.preprocess import prepare_volume
from cmedl.evaluation.translation import histogram_kl
from cmedl.io import read_volume
from cmedl.methods.checkpoints import build_generator_from_checkpoint, preprocess_of
from cmedl.nets.predict import predict_slices
from cmedl.training import load_checkpoint


def pmri_histogram_kl(checkpoint: str | Path, ct_paths: Sequence[Path], mr_paths: Sequence[Path],
                      max_volumes: int = 10, device: str = "cpu") -> float:
    """KL(pMRI || real MRI) in nats for the ``ct2mr`` generator of ``checkpoint`` (at most
    ``max_volumes`` volumes per side, in the given order)."""
    ckpt = load_checkpoint(checkpoint)
    generator, ct_pre = build_generator_from_checkpoint(ckpt, "ct2mr", source=checkpoint)
    mr_pre = preprocess_of(ckpt, "mr", checkpoint)
    generator = generator.to(device)
    pmri, pmri_body, mri, mri_body = [], [], [], []
    for path in list(ct_paths)[:max_volumes]:
        prepared = prepare_volume(read_volume(path), ct_pre)
        with torch.no_grad():
            out, _ = predict_slices(generator, prepared.image, device=device, activation=None,
                                    pad_value=prepared.pad_value)
        pmri.append(np.clip(out, -1.0, 1.0))
        pmri_body.append(prepared.body)
    for path in list(mr_paths)[:max_volumes]:
        prepared = prepare_volume(read_volume(path), mr_pre)
        mri.append(prepared.image)
        mri_body.append(prepared.body)
    return histogram_kl(pmri, mri, range=(-1.0, 1.0), mask=(pmri_body, mri_body))
