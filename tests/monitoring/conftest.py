"""Fixtures for the monitoring tests: a tiny seeded conv net with dropout and its data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, generator


class SmallNet(nn.Module):
    """(N, 1, 8, 8) -> 3 classes; batch norm and dropout so that train/eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.hidden = nn.Linear(4 * 16, 16)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.max_pool2d(h, 2).flatten(1)
        return self.fc(self.drop(torch.relu(self.hidden(h))))


@pytest.fixture
def small_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SmallNet()
    g = generator(0, "small-net-bn")
    net.bn.running_mean.copy_(0.1 * torch.randn(4, generator=g))
    net.bn.running_var.copy_(1 + 0.1 * torch.rand(4, generator=g))
    return net.eval()


@pytest.fixture
def small_data() -> ArrayDataset:
    g = generator(0, "small-data")
    return ArrayDataset(torch.rand(60, 1, 8, 8, generator=g), torch.randint(0, 3, (60,), generator=g), name="small")


@pytest.fixture
def small_test() -> torch.Tensor:
    return torch.rand(20, 1, 8, 8, generator=generator(0, "small-test"))
