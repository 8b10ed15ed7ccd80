"""The sanity checks' randomisation draws the same weights wherever the model runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.monitoring.transparency.sanity import _reinit
from tests.support.devices import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_reinit_draws_the_cpus_weights_on_any_device(device: str) -> None:
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 3))
    moved = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 3)).to(device)
    moved.load_state_dict(ref.state_dict())
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    for i in range(2):
        _reinit(ref[i], seed=0, name=str(i))
        _reinit(moved[i], seed=0, name=str(i))
    for k, v in ref.state_dict().items():
        assert not torch.equal(v, before[k]), f"{k} was not re-drawn"
        got = moved.state_dict()[k]
        assert got.device.type == device
        torch.testing.assert_close(got.cpu(), v, rtol=0, atol=0)
