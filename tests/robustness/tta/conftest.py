"""Fixtures of the test-time adaptation tests (the models themselves are in _support)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.robustness.tta._support import conv_bn, images


@pytest.fixture
def net() -> nn.Module:
    return conv_bn()


@pytest.fixture
def x() -> torch.Tensor:
    return images()
