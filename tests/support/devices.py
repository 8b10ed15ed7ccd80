"""The devices a device-comparison test runs on: the CPU everywhere, CUDA where there is one (marked ``cuda``); a
guard that a computation leaves the GPUs' random generators alone."""

from __future__ import annotations

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]
"""``@pytest.mark.parametrize("device", DEVICES)``: the CPU case checks the comparison itself in CI."""


def refuse_global_reseeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``torch.manual_seed`` and ``torch.cuda.manual_seed_all`` fail: they reseed every GPU's generator, while
    ``torch.random.fork_rng`` restores only the devices it is given (a CPU computation reset the caller's CUDA
    stream). Checked on a CPU-only machine too: what seeds the global generators must not call them."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("reseeds a generator it does not restore")

    monkeypatch.setattr(torch, "manual_seed", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
