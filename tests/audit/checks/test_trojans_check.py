"""Check ``trojans`` on the embedded trojaned model: verdict, target, hazard, artifacts and tables."""

from __future__ import annotations

import sqlite3

import pytest

from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow
from mlsafety.audit._check import KINDS, interval_problem
from mlsafety.audit.checks import trojans as trojans_check
from mlsafety.core import Classifier, InputError, UnknownNameError
from mlsafety.monitoring.trojans import demo_attack
from mlsafety.zoo import load_dataset, load_model

PARAMS = {
    "scanners": ["neural-cleanse", "strip", "spectral-signatures"],
    "n_seeds": 1,
    "nc_steps": 100,
    "max_clean": 200,
}


@pytest.fixture(scope="module")
def audited() -> tuple[AuditContext, list]:
    data = AuditData(
        test=load_dataset("digits", "test"), val=load_dataset("digits", "val"), train=load_dataset("digits", "train")
    )
    ctx = AuditContext(Classifier(load_model("digits-cnn-badnets")), data, seed=0, check_params={"trojans": PARAMS})
    check = CHECKS.create("trojans", **PARAMS)
    declared = check.hazards(ctx)
    # planning declares the pending Neural Cleanse hazard and scans nothing (the search is the first task)
    assert [str(h) for h in declared] == ["trojan/neural-cleanse"] and not trojans_check._SCANS.get(ctx)
    hazards = [str(x) for h in declared for x in trojans_check.expand_hazard(ctx, h)]
    result = check.run(ctx)
    return ctx, [hazards, result]


def test_trojans_check_flags_the_demo_model(audited: tuple[AuditContext, list]) -> None:
    _ctx, (hazards, result) = audited
    rows = {(r.hazard, r.metric): r for r in result.rows}
    assert CHECKS.get("trojans").pillar == "monitoring"
    assert rows[("clean", "neural_cleanse_flagged")].value == 1.0
    assert rows[("clean", "neural_cleanse_target")].value == 7.0
    assert hazards == ["trojan/neural-cleanse-class-7"]
    hz = hazards[0]
    assert rows[(hz, "attack_success_rate")].value > 0.9
    assert rows[(hz, "attack_success_rate")].ci_low is not None
    assert rows[(hz, "strip_input_auroc")].value > 0.9
    index = [rows[("clean", f"neural_cleanse_anomaly_index_class_{k}")].value for k in range(10)]
    assert max(range(10), key=lambda k: index[k]) == 7
    assert {a.name for a in result.artifacts} == {"neural-cleanse-triggers", "neural-cleanse-anomaly-index"}
    assert all(a.data.startswith(b"\x89PNG") for a in result.artifacts)


def test_trojan_hazard_is_triggered_test_data_with_true_labels(audited: tuple[AuditContext, list]) -> None:
    ctx, (hazards, _) = audited
    data = ctx.hazard(hazards[0])
    test = ctx.data.test
    keep = test.y != 7
    assert data.y.tolist() == test.y[keep].tolist()
    assert not bool((data.x == test.x[keep]).all())
    # the recovered trigger works like the planted one on this model
    pred = ctx.outputs(hazards[0]).pred
    planted = ctx.model.logits(demo_attack().apply_trigger(test.x[keep])).argmax(dim=1)
    assert float((pred == 7).float().mean()) > 0.9 and float((planted == 7).float().mean()) > 0.9
    with pytest.raises(UnknownNameError, match="recovered"):
        ctx.hazard("trojan/neural-cleanse-class-3")


def test_trojans_tables_render(audited: tuple[AuditContext, list]) -> None:
    _, (_, result) = audited
    stored = [
        StoredRow("trojans", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params), r.kind)
        for r in result.rows
    ]
    tables = CHECKS.get("trojans").tables(stored)
    titles = [t.title for t in tables]
    assert titles == ["Verdicts", "Neural Cleanse per class", "Recovered triggers on the test data"]
    verdicts = {row[0]: row for row in tables[0].rows}
    assert verdicts["neural-cleanse"][4].startswith("TROJANED") and verdicts["neural-cleanse"][6] == "7"
    score = next(r for r in stored if r.metric == "neural_cleanse_score")
    holds = score.ci_low <= score.params["threshold"] < score.ci_high  # type: ignore[operator]
    assert ("inconclusive" in verdicts["neural-cleanse"][4]) == holds
    assert [h.label for h in CHECKS.get("trojans").headlines(stored)] == ["Trojan: Neural Cleanse anomaly index"]


def test_every_row_is_an_estimate_with_its_interval_or_says_what_it_is(audited: tuple[AuditContext, list]) -> None:
    """Issue 12 point 11: scores, per-class indices and shares carry intervals; verdicts and targets are decisions."""
    _, (hazards, result) = audited
    rows = {(r.hazard, r.metric): r for r in result.rows}
    for r in result.rows:
        assert r.kind in KINDS and interval_problem(r.kind, r.value, r.ci_low, r.ci_high) is None, (r.metric, r)
    for scanner in ("neural_cleanse", "strip", "spectral_signatures"):
        assert rows[("clean", f"{scanner}_score")].kind == "estimate"
        assert rows[("clean", f"{scanner}_flagged")].kind == "decision"
        assert rows[("clean", f"{scanner}_target")].kind == "decision"
        assert rows[("clean", f"{scanner}_flag_rate")].kind == "estimate"
    # the planted class 7 lies below the median of every plausible reference (10 classes make a wide interval)
    seven = rows[("clean", "neural_cleanse_anomaly_index_class_7")]
    assert seven.ci_low is not None and seven.ci_high is not None
    assert 1.0 < seven.ci_low < seven.value < seven.ci_high
    assert seven.params["mask_l1"] == pytest.approx(seven.params["mask_l1_by_seed"][0])
    assert not any("_l1_class_" in m or m.endswith("_score_std") for _, m in rows)
    # STRIP's score is a share of the probe inputs: its exact interval
    strip = rows[("clean", "strip_score")]
    assert strip.params["interval"] == "exact (Clopper-Pearson)"
    assert rows[(hazards[0], "strip_input_auroc")].ci_low is not None


def test_a_seed_spread_interval_needs_two_seeds() -> None:
    data = AuditData(
        test=load_dataset("digits", "test"), val=load_dataset("digits", "val"), train=load_dataset("digits", "train")
    )
    params = {**PARAMS, "scanners": ["activation-clustering"], "n_seeds": 1}
    ctx = AuditContext(Classifier(load_model("digits-cnn")), data, seed=0, check_params={"trojans": params})
    with pytest.raises(InputError, match="n_seeds to 2 or more"):
        CHECKS.create("trojans", **params).run(ctx)


def test_scanner_seeds_come_from_the_run_seed_check_and_scanner() -> None:
    """Issue 12 point 8: not ``run seed + i`` (run seed 1's first scan would be run seed 0's second)."""
    from mlsafety.audit.checks.trojans import _scanner_kwargs
    from mlsafety.core import generator

    params = {**PARAMS, "n_seeds": 3}
    seeds = {
        (run, name): _scanner_kwargs(name, params, generator(run, "trojans", name, "seeds"))["seeds"]
        for run in (0, 1)
        for name in ("neural-cleanse", "strip")
    }
    assert all(len(set(s)) == 3 for s in seeds.values())
    assert not set(seeds[0, "neural-cleanse"]) & set(seeds[1, "neural-cleanse"])
    assert not set(seeds[0, "neural-cleanse"]) & set(seeds[0, "strip"])
    again = _scanner_kwargs("neural-cleanse", params, generator(0, "trojans", "neural-cleanse", "seeds"))["seeds"]
    assert again == seeds[0, "neural-cleanse"]


def test_a_seed_spread_interval_with_one_seed_is_refused_before_the_run_is_stored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from mlsafety.cli import main

    config = tmp_path / "audit.toml"
    config.write_text('[params.trojans]\nscanners = ["activation-clustering"]\nn_seeds = 1\n')
    db = tmp_path / "runs.sqlite"
    args = [
        "audit",
        "--check",
        "trojans",
        "--config",
        str(config),
        "--db",
        str(db),
        "--report",
        str(tmp_path / "r.html"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "set n_seeds to 2 or more (got 1)" in lines[0]
    assert not db.exists() or not sqlite3.connect(db).execute("SELECT count(*) FROM runs").fetchone()[0]


def test_a_gate_on_a_scanner_the_budget_left_out_says_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --budget a skipped scanner's row sits under its own hazard (trojan/strip) while its figures would
    sit under clean: a gate on trojans/clean/strip_score answered 'matches no stored metric', as if misspelt.
    The row now says which figures it stands for, and the gate fails saying they were not measured."""
    from mlsafety.audit import evaluate_gates
    from mlsafety.audit._budget import BUDGET_NOT_MEASURED

    def first_only(ctx, items, name, first=0):  # type: ignore[no-untyped-def]
        return iter(list(items)[:first])  # the deadline has passed: only the headline unit runs

    monkeypatch.setattr(trojans_check, "until_deadline", first_only)
    params = {"scanners": ["neural-cleanse", "strip"], "n_seeds": 1, "nc_steps": 10, "max_clean": 60}
    data = AuditData(test=load_dataset("digits", "test"), val=load_dataset("digits", "val"))
    ctx = AuditContext(Classifier(load_model("digits-cnn")), data, seed=0, check_params={"trojans": params})
    results = CHECKS.create("trojans", **params).run_tasks(ctx)
    rows = [StoredRow("trojans", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, r.params, r.kind)
            for res in results for r in res.rows]  # fmt: skip
    assert any(r.hazard == "trojan/strip" and r.metric == BUDGET_NOT_MEASURED for r in rows)
    assert not any(r.metric.startswith("strip_") for r in rows)
    for gate in ("trojans/clean/strip_score", "trojans/*/strip_flagged"):
        with pytest.raises(InputError, match="not measured") as info:
            evaluate_gates(rows, {}, {gate: 0.5})
        assert "the strip scan" in str(info.value)
    assert evaluate_gates(rows, {}, {"trojans/clean/neural_cleanse_score": 1e9}) == []  # measured: evaluated
    assert evaluate_gates(rows, {}, {"trojans/*/neural_cleanse_score": 1e9}) == []  # the strip row is not NC's
    with pytest.raises(UnknownNameError, match="matches no stored metric"):
        evaluate_gates(rows, {}, {"trojans/clean/abs_score": 0.5})  # a scanner not asked for: no such metric
