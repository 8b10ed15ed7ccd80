"""The devices a device-comparison test runs on: the CPU everywhere, CUDA where there is one (marked ``cuda``)."""

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
