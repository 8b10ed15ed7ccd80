"""Shared pieces of the trojan tests (a uniquely named module: ``conftest`` names clash across test folders)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlsafety.core import ArrayDataset
from mlsafety.monitoring.trojans import TriggerAttack
from mlsafety.zoo import DigitsCNN

TARGET = 3


def tiny_cnn() -> nn.Module:
    return DigitsCNN(width=8, dropout=0.0)


@dataclass
class Tiny:
    model: nn.Module
    attack: TriggerAttack
    target: int
    train: ArrayDataset
    poisoned: torch.Tensor
