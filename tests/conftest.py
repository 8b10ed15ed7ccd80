"""Shared fixtures: small seeded models and data made in the test, and the embedded default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, generator

# The models here are tiny: extra intra-op threads buy nothing, and OpenMP threads that spin-wait
# for a core another process holds make the suite many times slower on a busy 2-core machine.
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """A small conv net for (N, 1, 8, 8) inputs with dropout and batch norm (so modes matter)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).flatten(1)))


@pytest.fixture
def tiny_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet().eval()


@pytest.fixture
def tiny_data() -> ArrayDataset:
    g = generator(0, "tiny-data")
    return ArrayDataset(torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g), name="tiny")


@pytest.fixture(scope="session")
def digits_model() -> nn.Module:
    from mlsafety import zoo

    return zoo.load_model("digits-cnn")


@pytest.fixture(scope="session")
def digits_test() -> ArrayDataset:
    from mlsafety import zoo

    return zoo.load_dataset("digits", "test")
