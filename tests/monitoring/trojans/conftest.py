"""Tiny trojaned and clean digits CNNs shared by the trojan tests (trained once per session, seeded)."""

from __future__ import annotations

import pytest
from trojans_support import TARGET, Tiny, tiny_cnn

from mlsafety.core import ArrayDataset
from mlsafety.monitoring.trojans import BadNets, train_trojaned
from mlsafety.zoo import load_dataset


@pytest.fixture(scope="session")
def digits() -> dict[str, ArrayDataset]:
    return {s: load_dataset("digits", s) for s in ("train", "val", "test")}


@pytest.fixture(scope="session")
def tiny_trojaned(digits: dict[str, ArrayDataset]) -> Tiny:
    attack = BadNets(size=3, corner="bottom-right")
    model, p = train_trojaned(tiny_cnn, digits["train"], attack, rate=0.1, target=TARGET, seed=0, epochs=8, lr=5e-3)
    return Tiny(model, attack, TARGET, p.data, p.poisoned)
