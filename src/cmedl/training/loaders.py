"""DataLoaders of a training run: index order, seeded per epoch.

The datasets draw their own samples from ``(seed, epoch, index)``, so a loader only has to walk the
indices in order; batches do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cmedl.config import TrainConfig
from cmedl.training.distributed import rank_batches


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy/python seeds from the worker's torch seed, so any library RNG use
    inside workers is reproducible too (the datasets themselves are stateless)."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, config: TrainConfig, epoch: int, device: torch.device, drop_last: bool,
                world: int = 1, rank: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` in index order (the datasets draw their own samples), seeded by epoch.

    With ``world`` > 1 processes it yields rank ``rank``'s share of every global batch of
    ``training.batch_size`` (:func:`cmedl.training.distributed.rank_batches`)."""
    g = torch.Generator().manual_seed(config.training.seed * 100003 + epoch)
    n = config.data.num_workers
    common = dict(num_workers=n, worker_init_fn=seed_worker if n > 0 else None, generator=g,
                  collate_fn=torch.utils.data.default_collate, pin_memory=device.type == "cuda")
    if world > 1:
        batches = rank_batches(len(dataset), config.training.batch_size, world, rank, drop_last)
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=config.training.batch_size, shuffle=False, drop_last=drop_last, **common)


__all__ = ["make_loader", "seed_worker"]
