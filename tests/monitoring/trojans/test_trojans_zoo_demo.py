"""The shipped demo: Neural Cleanse tells digits-cnn-badnets from digits-cnn, and repair removes the trojan."""

from __future__ import annotations

import pytest

from mlsafety.monitoring.trojans import demo_attack, nc_unlearning, trojan_metrics
from mlsafety.monitoring.trojans.population import BADNETS_DEMO
from mlsafety.monitoring.trojans.scanners import create
from mlsafety.zoo import load_dataset, load_model


@pytest.mark.slow
def test_neural_cleanse_on_the_zoo_models_and_repair() -> None:
    val, test = load_dataset("digits", "val"), load_dataset("digits", "test")
    target = BADNETS_DEMO["target"]
    nc = create("neural-cleanse", seeds=(0,))
    clean = nc.scan(load_model("digits-cnn"), val)
    assert not clean.flagged and clean.targets == []
    bad_model = load_model("digits-cnn-badnets")
    bad = nc.scan(bad_model, val)
    assert bad.flagged and bad.targets == [target]
    # repair with the recovered trigger: attack success below 10%, clean accuracy within 2 points
    before = trojan_metrics(bad_model, demo_attack(), test, target)
    repaired = nc_unlearning(bad_model, val, bad.triggers[target].apply_trigger, rounds=3, target=target)
    after = trojan_metrics(repaired.model, demo_attack(), test, target)
    assert before["attack_success_rate"].value > 0.95
    assert after["attack_success_rate"].value < 0.10
    assert after["clean_accuracy"].value >= before["clean_accuracy"].value - 0.02
