"""Shared fixtures. Tests use tiny synthetic volumes in tmp dirs; real data only when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cmedl.io import Volume

#: Real data shipped beside the project (absent in a user's clone: tests then skip).
SHARED_DATA = Path(os.environ.get("CMEDL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = SHARED_DATA / "real"

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_shared(*parts: str) -> Path:
    """Return ``shared/data/real/<parts>`` or skip the test with a reason."""
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set CMEDL_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny networks: they gain nothing from two, and on a
    shared 2-core machine OpenMP spin-waiting made them up to 5x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_volume() -> Volume:
    """A 6x20x24 volume with anisotropic spacing, an origin and an oblique-free direction."""
    arr = np.arange(6 * 20 * 24, dtype=np.float32).reshape(6, 20, 24)
    return Volume(arr, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0))


def one_line_error(res, *needles: str) -> str:
    """Assert a CLI result is a failure with one ``error: ...`` line on stderr holding every needle."""
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def two_lung_ct() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A 24 x 80 x 96 HU array (air, an elliptic body at 40 HU, two lungs at -850 HU around slice 8) and its
    ``z, y, x`` index grids, for lung-mask and lung-filter known answers."""
    z, y, x = np.mgrid[0:24, 0:80, 0:96]
    arr = np.full((24, 80, 96), -1000, np.int16)
    arr[((y - 40) / 36) ** 2 + ((x - 48) / 44) ** 2 < 1] = 40
    for cx in (28, 68):
        arr[((y - 40) / 24) ** 2 + ((x - cx) / 15) ** 2 + ((z - 8) / 5) ** 2 < 1] = -850
    return arr, (z, y, x)
