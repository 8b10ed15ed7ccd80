"""The guard on a GPU: logits, decisions and scores equal the CPU's, on the model's device (each case
runs on the CPU too, so the comparison is tested without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from mlsafety.guard import Guard
from tests.guard.test_guard_fastpath import _setup
from tests.support.devices import DEVICES


@pytest.mark.parametrize("n", [1, 3, 40])  # the few-inputs path and the tensor path
@pytest.mark.parametrize("device", DEVICES)
def test_guard_on_the_device_equals_the_cpu(device: str, n: int) -> None:
    model, mon, det, x = _setup()
    ref_guard = Guard(model, mon, copy.deepcopy(det))
    guard = Guard(copy.deepcopy(model), mon, copy.deepcopy(det)).to(device)
    with torch.no_grad():
        ref = ref_guard(x[:n])
        got = guard(x[:n])  # inputs on the CPU go to the model's device
    assert got.logits.device.type == device
    torch.testing.assert_close(got.logits.cpu(), ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.score.cpu(), ref.score, atol=1e-3, rtol=1e-4)  # the violation
    assert 0 < int(ref.accept.sum()) < len(ref.accept) or n < 40  # both decisions occur
    # decisions agree except where the violation sits on zero to within float error
    near = ref.score.abs() < 1e-3
    assert bool(((got.accept.cpu() == ref.accept) | near).all())
    assert [r for r, z in zip(got.reasons, near.tolist()) if not z] == [
        r for r, z in zip(ref.reasons, near.tolist()) if not z
    ]
