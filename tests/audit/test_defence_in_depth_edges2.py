"""A recovered trojan trigger whose hazard has no inputs (every test input is of its target class), through the
trojans check, a whole small audit and the defence-in-depth report; and gates on a metric stored as not
measured (tiny models and data made here)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety.audit import CHECKS, NOT_APPLICABLE, AuditConfig, AuditContext, AuditData, Row, StoredRow, run_audit
from mlsafety.audit._budget import not_measured_row
from mlsafety.audit._check import DECISION
from mlsafety.audit._gates import evaluate_gates
from mlsafety.audit._report import render_report
from mlsafety.audit._store import Store
from mlsafety.audit.checks import trojans
from mlsafety.core import Hazard, MlsafetyError
from mlsafety.monitoring.trojans import Trigger
from tests.support.audit_ctx import CLASSES
from tests.support.audit_ctx import tiny_data as _data
from tests.support.audit_ctx import tiny_model as _model

TARGET = 1
TROJANS = {"scanners": ["neural-cleanse", "strip"], "n_seeds": 2, "nc_steps": 20, "max_clean": 30}


def _trigger(monkeypatch: pytest.MonkeyPatch) -> Trigger:
    """A trigger of class :data:`TARGET` that Neural Cleanse 'recovered' (whatever the real scan finds)."""
    trigger = Trigger(torch.zeros(1, 8, 8), torch.ones(1, 8, 8), target=TARGET, source=trojans.NC)
    monkeypatch.setattr(trojans, "_recovered", lambda ctx: [trigger])
    return trigger


def _stored(check: str, rows: list[Row]) -> list[StoredRow]:
    return [StoredRow(check, r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, r.params, r.kind) for r in rows]


# -- 1. the trojans check --------------------------------------------------------------------------------------
def test_the_trojans_check_stores_a_trigger_without_inputs_as_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test input is of the trigger's target class, so its hazard has no inputs. The Neural Cleanse task
    raised 'a proportion needs at least one trial' (attack success rate and accuracy of zero inputs) and the
    STRIP task 'ranking metrics need at least one ... OOD score' (its AUROC of clean vs no triggered inputs).
    Now the hazard gets one not_applicable row naming it and why; each scanner's own rows are stored."""
    trigger = _trigger(monkeypatch)
    g = torch.Generator().manual_seed(0)
    ctx = AuditContext(_model(), AuditData(test=_data(40, g, label=TARGET), val=_data(40, g)))
    check = CHECKS.create("trojans", **TROJANS)
    rows = [r for t in check.tasks(ctx) for r in t.run().rows]  # each task as the engine runs it

    hazard = str(Hazard.trojan(trigger.name))
    assert len(ctx.hazard(hazard)) == 0  # the case
    mine = [r for r in rows if r.hazard == hazard]
    assert [r.metric for r in mine] == [NOT_APPLICABLE]
    (row,) = mine
    assert row.kind == DECISION and row.value == 1.0
    why = row.params["reason"]
    assert hazard in why and "no inputs" in why and "target class" in why
    assert "attack_success_rate" in why and "strip_input_auroc" in why
    assert "modality" not in row.params  # a hazard without inputs, not the check skipped on this modality
    metrics = {r.metric for r in rows if r.hazard == "clean"}
    assert {"neural_cleanse_score", "neural_cleanse_flagged", "strip_score", "strip_flagged"} <= metrics


# -- the whole small audit -----------------------------------------------------------------------------------
MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
"""


@pytest.fixture
def files(tmp_path):  # type: ignore[no-untyped-def]
    """A model file, test data all of class :data:`TARGET`, validation data of every class, and an OOD set."""
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "test.npz", x=x, y=np.full(40, TARGET))
    np.savez(tmp_path / "val.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=rng.integers(0, CLASSES, 40))
    np.savez(tmp_path / "ood.npz", x=0.3 * rng.random((20, 1, 8, 8)).astype(np.float32), y=-np.ones(20, dtype=int))
    return tmp_path


def _audit(files: Any, **kw: Any) -> Any:
    params = {"trojans": TROJANS, "defence-in-depth": {"adaptive_steps": 3, "monitors": ["energy"]}}
    config = AuditConfig(
        model=f"{files}/m.py:small", data=str(files / "test.npz"), val=str(files / "val.npz"),
        ood=[str(files / "ood.npz")], checks=["clean", "trojans", "defence-in-depth"], quick=True, seed=3,
        check_params=params, **kw,
    )  # fmt: skip
    return run_audit(config, db=files / "runs.sqlite", report="")


def test_a_whole_audit_with_a_trigger_without_inputs_completes(files, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The trojans check failed the audit in this case (defence in depth already stored the hazard as not
    applicable). Now the audit completes, both checks storing the hazard's not_applicable row, naming it."""
    trigger = _trigger(monkeypatch)
    result = _audit(files)
    hazard = str(Hazard.trojan(trigger.name))
    na = {r.check: r for r in result.rows if r.hazard == hazard}
    assert set(na) == {"trojans", "defence-in-depth"}
    assert all(r.metric == NOT_APPLICABLE and hazard in r.params["reason"] for r in na.values())
    assert not [r for r in result.rows if r.hazard == hazard and r.metric != NOT_APPLICABLE]


# -- 2. the defence-in-depth view ----------------------------------------------------------------------------
def test_the_view_shows_each_not_applicable_row_with_its_reason() -> None:
    """The view took out only the budget's rows and showed them; a hazard's not_applicable row and the
    deployment's were in no table. Each now is, in a table of what was not measured, with its reason."""
    hazard, why = "trojan/neural-cleanse-class-1", "trojan/neural-cleanse-class-1 has no inputs, so none of ..."
    dep_why = "the exposure-weighted expected escaped-failure rate is not measured: exposure weighs ..."
    rows = [
        Row.exact(hazard, NOT_APPLICABLE, 1.0, DECISION, reason=why),
        Row.exact("deployment", NOT_APPLICABLE, 1.0, DECISION, reason=dep_why, exposure={"clean": 1.0}),
        not_measured_row("corruption/fog/3", "corruption inputs"),
    ]
    tables = CHECKS.get("defence-in-depth").tables(_stored("defence-in-depth", rows))
    cells = [(t.title, tuple(row)) for t in tables for row in t.rows]
    shown = {row for _, row in cells}
    assert (hazard, why) in shown
    assert ("deployment", dep_why) in shown
    assert ("corruption/fog/3", rows[2].params["reason"]) in shown  # the budget's table, as before
    titles = {title for title, row in cells if row[0] in (hazard, "deployment")}
    assert len(titles) == 1 and "not measured" in titles.pop().lower()


def test_the_report_shows_why_defence_in_depth_did_not_measure_a_hazard(files, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The stored not_applicable row of defence in depth appeared nowhere in the report; its reason now does."""
    trigger = _trigger(monkeypatch)
    result = _audit(files)
    store = Store(files / "runs.sqlite")
    try:
        html = render_report(store, result.run_id)
    finally:
        store.close()
    did = html[html.index("Defence in depth") :]
    hazard = str(Hazard.trojan(trigger.name))
    assert f"{hazard} has no inputs, so none of its rates can be measured" in did


# -- 3. gates on a metric stored as not measured --------------------------------------------------------------
def _gate_error(rows: list[StoredRow], key: str) -> str:
    with pytest.raises(MlsafetyError) as info:
        evaluate_gates(rows, {}, {key: 0.1})
    return str(info.value)


def test_a_gate_on_a_metric_stored_as_not_applicable_fails_saying_why() -> None:
    """The gate failed with 'matches no stored metric', as if the key were misspelt. It still fails (a gate
    passed on a number never measured would be dishonest), saying the metric was not measured and why."""
    why = "the exposure-weighted expected escaped-failure rate is not measured: exposure weighs corruption/fog/3"
    rows = _stored("defence-in-depth", [Row.exact("deployment", NOT_APPLICABLE, 1.0, DECISION, reason=why)])
    msg = _gate_error(rows, "defence-in-depth/deployment/expected_escaped_failure_rate")
    assert "matches no stored metric" not in msg and "not measured" in msg and why in msg
    assert "\n" not in msg


def test_a_gate_on_a_metric_the_budget_left_out_fails_saying_why() -> None:
    row = not_measured_row("deployment", "the exposure-weighted expected escaped-failure rate")
    msg = _gate_error(_stored("defence-in-depth", [row]), "defence-in-depth/deployment/expected_escaped_failure_rate")
    assert "not measured" in msg and "--budget" in msg
    assert "matches no stored metric" not in msg and row.params["reason"] in msg


def test_a_pattern_gate_fails_when_any_hazard_it_bounds_was_not_measured() -> None:
    """`defence-in-depth/*/escaped_failure_rate` passed on the measured hazards alone when --budget left one
    out: the bound was claimed for a hazard never measured. It now fails, naming that hazard and why."""
    rows = _stored(
        "defence-in-depth",
        [
            Row.exact("clean", "escaped_failure_rate", 0.01, DECISION),
            Row.exact("ood/noise", "escaped_failure_rate", 0.02, DECISION),
            not_measured_row("corruption/fog/3", "the escaped-failure rate"),
        ],
    )
    msg = _gate_error(rows, "defence-in-depth/*/escaped_failure_rate")
    assert "corruption/fog/3" in msg and "not measured" in msg and "2 measured" in msg and "\n" not in msg
    msg = _gate_error(rows, "defence-in-depth/corruption/*/escaped_failure_rate")  # matched nothing measured
    assert "corruption/fog/3" in msg and "not measured" in msg
    # a not-measured row of another kind does not stand for this metric (the deployment figure is another one)
    from mlsafety.audit.checks.defence_in_depth import _deployment_not_measured

    fog = Hazard.corruption("fog", 3)
    deployment = _deployment_not_measured([fog], {fog: not_measured_row(str(fog), "x")}, {str(fog): 1.0})
    assert deployment.hazard == "deployment"
    fine = [r for r in rows if r.hazard != "corruption/fog/3"] + _stored("defence-in-depth", [deployment])
    assert evaluate_gates(fine, {}, {"defence-in-depth/*/escaped_failure_rate": 0.1}) == []
    # a pattern that names only measured hazards is evaluated as before
    assert evaluate_gates(rows, {}, {"defence-in-depth/ood/*/escaped_failure_rate": 0.1}) == []
    (fail,) = evaluate_gates(rows, {}, {"defence-in-depth/ood/*/escaped_failure_rate": 0.01})
    assert fail.key == "defence-in-depth/ood/noise/escaped_failure_rate"


def test_a_gate_on_another_check_or_hazard_still_matches_nothing() -> None:
    """Only the gate's own check and hazard are read: a not-measured row elsewhere changes nothing."""
    rows = _stored("defence-in-depth", [Row.exact("deployment", NOT_APPLICABLE, 1.0, DECISION, reason="r")])
    assert "matches no stored metric" in _gate_error(rows, "defence-in-depth/clean/escaped_failure_rate")
    assert "matches no stored metric" in _gate_error(rows, "trojans/deployment/expected_escaped_failure_rate")


def test_the_gate_on_the_trigger_without_inputs_fails_saying_why(files, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """In a whole audit: a gate on the trigger's attack success rate names the hazard's reason."""
    trigger = _trigger(monkeypatch)
    hazard = str(Hazard.trojan(trigger.name))
    with pytest.raises(MlsafetyError) as info:
        _audit(files, fail_over={f"trojans/{hazard}/attack_success_rate": 0.5})
    msg = str(info.value)
    assert "not measured" in msg and "has no inputs" in msg and hazard in msg


def test_the_trojans_view_shows_a_trigger_without_inputs_with_its_reason_not_as_a_value() -> None:
    """The trigger's not_applicable row appeared in "Recovered triggers on the test data" as the value 1 with
    no reason; it is now in its own table with the reason, and the measured triggers keep theirs."""
    empty, why = "trojan/neural-cleanse-class-1", "trojan/neural-cleanse-class-1 has no inputs: every test input ..."
    rows = [
        Row.exact(empty, NOT_APPLICABLE, 1.0, DECISION, reason=why),
        Row.exact("trojan/neural-cleanse-class-2", "attack_success_rate", 0.5, DECISION),
    ]
    tables = CHECKS.get("trojans").tables(_stored("trojans", rows))
    by_title = {t.title: [tuple(r) for r in t.rows] for t in tables}
    recovered = by_title["Recovered triggers on the test data"]
    assert [r[0] for r in recovered] == ["trojan/neural-cleanse-class-2"]
    assert by_title["Recovered triggers not measured"] == [(empty, why)]
