"""Cost of the online augmentation per sample (image + mask), per transform, at 64 and 256 px.

Run: ``python benchmarks/bench_augment.py``. Prints ms/sample (median of repeats, one thread) so
it can be compared with a training step (see bench_train_step.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cmedl.data.augment import AugmentConfig, Augmenter

SETTINGS = {
    "flip only": dict(flip_prob=1.0, affine_prob=0.0, elastic_prob=0.0),
    "affine only": dict(flip_prob=0.0, affine_prob=1.0, elastic_prob=0.0),
    "elastic only": dict(flip_prob=0.0, affine_prob=0.0, elastic_prob=1.0),
    "defaults": {},
}


def time_ms(aug: Augmenter, size: int, repeats: int = 30) -> float:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(1, size, size)).astype(np.float32)
    lab = (rng.random((1, size, size)) > 0.7).astype(np.float32)
    aug(img, lab, seed=0)  # warm-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        aug(img, lab, seed=i)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'transform':<14}{'64x64 ms':>10}{'256x256 ms':>12}")
    for name, kw in SETTINGS.items():
        aug = Augmenter(AugmentConfig(**kw))
        print(f"{name:<14}{time_ms(aug, 64):>10.2f}{time_ms(aug, 256):>12.2f}")


if __name__ == "__main__":
    main()
