"""Tiny trojaned and clean digits CNNs shared by the trojan tests (trained once per session, seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset
from mlsafety.monitoring.trojans import BadNets, TriggerAttack, train_trojaned
from mlsafety.zoo import DigitsCNN, load_dataset, seeded_init, train_classifier

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


@pytest.fixture(scope="session")
def digits() -> dict[str, ArrayDataset]:
    return {s: load_dataset("digits", s) for s in ("train", "val", "test")}


@pytest.fixture(scope="session")
def tiny_trojaned(digits: dict[str, ArrayDataset]) -> Tiny:
    attack = BadNets(size=3, corner="bottom-right")
    model, p = train_trojaned(tiny_cnn, digits["train"], attack, rate=0.1, target=TARGET, seed=0, epochs=8, lr=5e-3)
    return Tiny(model, attack, TARGET, p.data, p.poisoned)


@pytest.fixture(scope="session")
def tiny_clean(digits: dict[str, ArrayDataset]) -> nn.Module:
    return train_classifier(seeded_init(tiny_cnn(), 0, "tiny-clean"), digits["train"], epochs=8, seed=0, lr=5e-3)
