"""Tiny seeded models and data for the attack tests (made here, no files)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import generator

K = 5


def tiny_net(seed: int = 0) -> nn.Module:
    """A small conv net on 1x4x4 inputs with dropout and batch norm (so eval mode matters)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, K),
    )
    return net.eval()


def tiny_data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(seed, "tiny-data")
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    return x, y


@pytest.fixture
def net() -> nn.Module:
    return tiny_net()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_data()
