"""Population: the plan is reproducible and balanced; models round-trip; scoring computes the right AUROC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trojans_support import tiny_cnn

import mlsafety.monitoring.trojans as trojans
from mlsafety.core import ArrayDataset, InputError
from mlsafety.metrics import auroc
from mlsafety.monitoring.trojans import TROJAN_ATTACKS, load_population, make_population, plan_population, score_scanner
from mlsafety.monitoring.trojans.scanners import Scanner, SeedScan


def test_public_api_has_the_families() -> None:  # __all__ order and names: tests/test_public_api.py
    import mlsafety.monitoring.trojans.attacks as attacks
    import mlsafety.monitoring.trojans.scanners as scanners

    assert attacks.available() == ["badnets", "blended", "label-consistent", "wanet"]
    assert not hasattr(trojans, "create") and not hasattr(trojans, "ATTACKS"), "no family-less factory"
    assert trojans.SCANNERS is scanners.SCANNERS and trojans.TROJAN_ATTACKS is attacks.TROJAN_ATTACKS
    assert trojans.SCANNERS is not trojans.TROJAN_ATTACKS


def test_plan_is_reproducible_balanced_and_covers_every_attack() -> None:
    a, b = plan_population(20, seed=0), plan_population(20, seed=0)
    assert a == b
    assert plan_population(20, seed=1) != a
    assert sum(m.trojaned for m in a) == 10
    assert {m.attack for m in a if m.trojaned} == set(TROJAN_ATTACKS.available())
    assert len({m.name for m in a}) == 20 and len({m.seed for m in a}) == 20
    assert all(0 <= m.target < 10 for m in a)
    with pytest.raises(InputError):
        plan_population(1)


def test_make_and_load_population(tmp_path: Path, digits: dict[str, ArrayDataset]) -> None:
    small = digits["train"].subset(torch.arange(200))
    members = make_population(tmp_path, n=2, epochs=1, factory=tiny_cnn, train=small, test=digits["test"])
    assert (tmp_path / "manifest.json").is_file()
    loaded = load_population(tmp_path, factory=tiny_cnn)
    assert [m.name for m, _ in loaded] == [m.name for m in members]
    assert [m.clean_accuracy for m, _ in loaded] == [m.clean_accuracy for m in members]
    for (m, model), orig in zip(loaded, members):
        assert (tmp_path / f"{m.name}.safetensors").is_file() and not model.training
        assert 0 <= orig.attack_success_rate <= 1
    with pytest.raises(InputError, match="manifest"):
        load_population(tmp_path / "missing")


class _Oracle(Scanner):
    """Scores a model by a number planted in it; names a target only for trojaned ones."""

    name = "oracle"

    def _scan(self, clf: Any, data: Any, g: torch.Generator) -> SeedScan:
        score = float(clf.module.planted)
        return SeedScan(score=score, targets=[int(clf.module.target)] if score > 0.5 else [])


def test_score_scanner_auroc_and_target_accuracy(digits: dict[str, ArrayDataset]) -> None:
    members = plan_population(6, seed=0)
    pop = []
    planted = [0.1, 0.9, 0.3, 0.2, 0.6, 0.8]  # clean: 0.1, 0.3, 0.6; trojaned: 0.9, 0.2, 0.8
    for m, s in zip(members, planted):
        model = tiny_cnn().eval()
        model.planted = s  # type: ignore[assignment]
        model.target = m.target if m.name != members[5].name else (m.target + 1) % 10  # type: ignore[assignment]
        pop.append((m, model))
    small = digits["val"].subset(torch.arange(30))
    res = score_scanner(_Oracle(seeds=(0,), threshold=0.5), pop, small, digits["test"], digits["train"], n_boot=200)
    clean = torch.tensor([0.1, 0.3, 0.6])
    trojaned = torch.tensor([0.9, 0.2, 0.8])
    assert res.auroc.value == pytest.approx(float(auroc(clean, trojaned)))
    assert res.auroc.ci_low <= res.auroc.value <= res.auroc.ci_high
    assert res.target_accuracy is not None and res.target_accuracy.value == pytest.approx(1 / 3)  # 0.2 names none
    assert res.verdict_accuracy.value == pytest.approx(4 / 6)
    with pytest.raises(InputError):
        score_scanner(_Oracle(), pop[::2], small, digits["test"], digits["train"])
