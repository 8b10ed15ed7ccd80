"""Seeds as the design says: every random choice of a check comes from a generator derived from the
run seed, the check and the task, so a check's rows do not depend on which other checks run, two
tasks never share a stream, and no row stores a seed that decided nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mlsafety.audit import CHECKS, AuditConfig, run_audit
from mlsafety.audit._context import AuditContext, AuditData
from mlsafety.core import ArrayDataset, Classifier, derive_seed

SMALL: dict[str, dict[str, Any]] = {
    "adversarial": {"attacks": ["pgd"], "eps": [0.1, 0.2], "n": 24, "n_boot": 50},
    "certified": {"sigmas": [0.25, 0.5], "num_inputs": 12, "n0": 16, "n": 64, "num_attacked": 2, "denoised": False},
    "transparency": {
        "methods": ["saliency", "smoothgrad"],
        "grid_methods": ["saliency"],
        "sanity_inputs": 4,
        "examples": 1,
        "vis_steps": 3,
    },
}
"""Small settings for the checks whose randomness this file pins (the quick profile otherwise)."""

ALONE = [*SMALL, "clean", "calibration-basic", "selective", "corruptions"]
"""Checks run alone and with every other check; their rows must be the same."""


def _rows(result: Any, check: str) -> list[tuple[Any, ...]]:
    return sorted(
        (r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, repr(sorted(r.params.items())))
        for r in result.rows
        if r.check == check
    )


@pytest.fixture(scope="module")
def together(tmp_path_factory: pytest.TempPathFactory) -> Any:
    checks = [c for c in CHECKS.available() if not c.startswith("test-")]
    folder = tmp_path_factory.mktemp("seeds-together")
    return run_audit(AuditConfig(quick=True, checks=checks, check_params=SMALL), db=folder / "r.sqlite", report="")


@pytest.mark.parametrize("check", ALONE)
def test_a_checks_rows_are_the_same_alone_and_with_every_other_check(check: str, together: Any, tmp_path: Path):
    params = {check: SMALL[check]} if check in SMALL else {}
    alone = run_audit(AuditConfig(quick=True, checks=[check], check_params=params), db=tmp_path / "a.sqlite", report="")
    rows = _rows(alone, check)
    assert rows, f"check {check!r} stored no rows"
    assert rows == _rows(together, check)


def test_no_row_stores_a_dead_seed(together: Any):
    """The checks derive their generators from the run seed; none records an attack's unused ``seed``."""
    for r in together.rows:
        if r.check in SMALL:
            assert not any("seed" in key for key in r.params), (r.check, r.metric, r.params)


def test_the_run_seed_changes_the_random_draws(tmp_path: Path):
    cfg = {"checks": ["certified"], "check_params": {"certified": SMALL["certified"]}, "quick": True}
    a = run_audit(AuditConfig(**cfg), db=tmp_path / "a.sqlite", report="")
    b = run_audit(AuditConfig(**cfg, seed=1), db=tmp_path / "a.sqlite", report="")
    assert _rows(a, "certified") != _rows(b, "certified"), "the run seed must reach the certification noise"


def _context(seed: int = 0) -> AuditContext:
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(x, torch.arange(4) % 2)
    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    return AuditContext(model, AuditData(data, data), seed)


def test_two_tasks_draw_different_streams_and_each_stream_is_reproducible():
    ctx = _context()
    draws = {
        names: torch.rand(8, generator=ctx.generator(*names))
        for names in [("adversarial", "pgd", "0.1"), ("adversarial", "pgd", "0.2"), ("certified", 0.25, "plain"),
                      ("certified", 0.5, "plain"), ("transparency", "sanity", "cascading")]
    }  # fmt: skip
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
    for names, drawn in draws.items():
        torch.rand(5)  # neither the global generator nor other tasks' draws matter
        assert torch.equal(torch.rand(8, generator=_context().generator(*names)), drawn)
        assert not torch.equal(torch.rand(8, generator=_context(seed=1).generator(*names)), drawn)
    assert ctx.seed_for("certified", 0.25) == derive_seed(0, "certified", 0.25) != ctx.seed_for("certified", 0.5)


def test_no_check_hands_the_raw_run_seed_to_a_seeded_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Bootstrap seeds, attack and sanity-check randomness are derived from (run seed, check, task):
    the raw run seed reaching a seeded API would give two tasks the same stream."""
    from mlsafety.audit.checks import adversarial, certified
    from mlsafety.monitoring.transparency import evaluate as transparency  # the check's bootstraps run here
    from mlsafety.robustness import _evaluate, attacks

    run_seed = 12345
    seen: list[tuple[str, Any]] = []

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, kwargs.get("seed")))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module in (adversarial, certified, transparency, _evaluate):
        for name in ("bootstrap_mean", "bootstrap_statistic"):
            if hasattr(module, name):
                spy(module, name)
    spy(attacks, "create")
    spy(adversarial.atk, "create")
    cfg = AuditConfig(quick=True, checks=list(SMALL), check_params=SMALL, seed=run_seed)
    run_audit(cfg, db=tmp_path / "r.sqlite", report="")
    assert {n for n, _ in seen} >= {"bootstrap_mean", "bootstrap_statistic", "create"}
    assert all(seed != run_seed for _, seed in seen), seen
    assert all(seed is None for name, seed in seen if name == "create"), "attacks take the task's generator only"


@pytest.mark.parametrize(
    ("attack_params", "message"),
    [
        ({"pgd": {"seed": 3}}, r"attack_params for 'pgd' set 'seed'; remove it"),
        ({"pgd": {"step": 3}}, r"'pgd' has no parameter 'step'\. Did you mean 'steps'\?"),
    ],
)
def test_a_second_seed_or_a_misspelt_attack_parameter_is_refused_before_anything_is_stored(
    attack_params: dict[str, Any], message: str, tmp_path: Path
):
    from mlsafety.core import InputError

    params = {"adversarial": {**SMALL["adversarial"], "attack_params": attack_params}}
    db = tmp_path / "r.sqlite"
    with pytest.raises(InputError, match=message):
        run_audit(AuditConfig(quick=True, checks=["adversarial"], check_params=params), db=db, report="")
    assert not db.exists()
