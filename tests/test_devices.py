"""Device names: a CUDA index this machine does not have is a one-line error, not a crash mid-run."""

from __future__ import annotations

import pytest
import torch

from cmedl import devices
from cmedl.errors import ConfigError


def test_a_missing_cuda_index_names_the_devices_there_are(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    assert devices.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"'cuda:2'.*sees 2 CUDA devices \(cuda:0 to cuda:1") as exc:
        devices.resolve_device("cuda:2")
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="sees 1 CUDA device "):
        devices.resolve_device(torch.device("cuda:3"))
