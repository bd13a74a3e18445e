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
