"""Check ``defence-in-depth`` at its edges: a hazard without inputs, and exposure on a hazard a ``--budget``
left out. Each is stored as not measured, with a reason naming the hazard; neither stops the check's other
hazards or its summary (tiny models and data made here)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety.audit import CHECKS, NOT_APPLICABLE, AuditContext, AuditData, Row
from mlsafety.audit._budget import BUDGET_NOT_MEASURED
from mlsafety.audit._check import DECISION
from mlsafety.audit.checks import trojans
from mlsafety.core import ArrayDataset, Hazard, InputError
from mlsafety.monitoring.trojans import Trigger
from tests.support.audit_ctx import ExtraContext as _Context
from tests.support.audit_ctx import tiny_data as _data
from tests.support.audit_ctx import tiny_model as _model


def _rows(ctx: AuditContext, **params: Any) -> dict[tuple[str, str], Row]:
    """Every task's rows (each task run as the engine would: an exception fails the test)."""
    check = CHECKS.create("defence-in-depth", **{"monitors": ["energy"], "adaptive": False, **params})
    tasks = check.tasks(ctx)
    rows = [r for t in tasks for r in t.run().rows]
    keys = [(r.hazard, r.metric) for r in rows]
    assert len(keys) == len(set(keys)), keys
    return dict(zip(keys, rows, strict=True))


def _metrics(rows: dict[tuple[str, str], Row], hazard: str) -> set[str]:
    return {m for h, m in rows if h == hazard}


def test_a_trojan_trigger_of_the_only_test_class_is_stored_as_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recovered trigger's hazard holds the test inputs not of its target class; when every test input is of
    that class it has none. The check stored nothing: 'an outcome needs at least one input', naming no hazard,
    from the hazard's task and again from the summary. Now that hazard gets one decision row saying why, and the
    other hazards are measured and summarised as before."""
    g = torch.Generator().manual_seed(0)
    trigger = Trigger(torch.zeros(1, 8, 8), torch.ones(1, 8, 8), target=1, source=trojans.NC)
    monkeypatch.setattr(trojans, "_recovered", lambda ctx: [trigger])
    ctx = AuditContext(_model(), AuditData(test=_data(40, g, label=trigger.target), val=_data(40, g)))
    ctx.planned_hazards = [trojans.PENDING]
    rows = _rows(ctx)

    hazard = str(Hazard.trojan(trigger.name))
    assert len(ctx.hazard(hazard)) == 0  # the case: every test input is of the target class
    assert _metrics(rows, hazard) == {NOT_APPLICABLE}
    row = rows[hazard, NOT_APPLICABLE]
    assert row.kind == DECISION and row.value == 1.0
    assert hazard in row.params["reason"] and "no inputs" in row.params["reason"]
    assert "target class" in row.params["reason"]
    assert "modality" not in row.params  # a hazard not measured, not the check skipped on this modality
    assert {"escaped_failure_rate", "rpn"} <= _metrics(rows, "clean")  # the other hazards, summarised


def test_an_empty_hazard_with_exposure_makes_the_expected_rate_not_measured() -> None:
    """Any hazard whose inputs end up empty is not measured; exposure weighing it cannot be honoured, so the
    deployment figure is stored as not measured with the hazard named (never a rate that drops its weight)."""
    g = torch.Generator().manual_seed(0)
    empty = Hazard.corruption("gaussian-noise", 3)
    none = ArrayDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    ctx = _Context(_model(), AuditData(test=_data(40, g), val=_data(40, g)), extra={empty: none})
    rows = _rows(ctx, exposure={"clean": 0.9, str(empty): 0.1})

    assert _metrics(rows, str(empty)) == {NOT_APPLICABLE}
    assert str(empty) in rows[str(empty), NOT_APPLICABLE].params["reason"]
    assert _metrics(rows, "deployment") == {NOT_APPLICABLE}
    why = rows["deployment", NOT_APPLICABLE].params["reason"]
    assert f"{empty} (no inputs)" in why and "expected escaped-failure rate" in why
    assert {"escaped_failure_rate", "rpn"} <= _metrics(rows, "clean")


def _budgeted(exposure: dict[str, float]) -> tuple[dict[tuple[str, str], Row], Hazard]:
    """The rows under a far deadline of an audit planning a corruption hazard no check built (so, under
    ``--budget``, not measured), with ``exposure`` naming it."""
    g = torch.Generator().manual_seed(0)
    ctx = AuditContext(_model(), AuditData(test=_data(40, g), val=_data(40, g)))
    dear = Hazard.corruption("gaussian-noise", 3)
    ctx.planned_hazards = [dear]
    check = CHECKS.create("defence-in-depth", monitors=["energy"], adaptive=False, exposure=exposure)
    tasks = check.tasks(ctx)  # validated as the engine does, before any deadline
    ctx.deadline = time.perf_counter() + 3600
    rows = [r for t in tasks for r in t.run().rows]
    return {(r.hazard, r.metric): r for r in rows}, dear


def test_exposure_on_a_hazard_the_budget_left_out_stores_the_expected_rate_as_not_measured() -> None:
    """Exposure is validated against the planned hazards; under --budget one of them may not be measured, and
    the summary then raised 'exposure names hazard ..., which was not measured' after the run was stored. The
    expected rate is now stored as not measured (the budget's row), naming the exposed hazard."""
    rows, dear = _budgeted({"clean": 0.9, "corruption/gaussian-noise/3": 0.1})
    assert _metrics(rows, str(dear)) == {BUDGET_NOT_MEASURED}
    assert _metrics(rows, "deployment") == {BUDGET_NOT_MEASURED}
    why = rows["deployment", BUDGET_NOT_MEASURED].params["reason"]
    assert "expected escaped-failure rate" in why and str(dear) in why and "--budget" in why
    assert {"escaped_failure_rate", "rpn"} <= _metrics(rows, "clean")


def test_a_zero_exposure_on_a_hazard_the_budget_left_out_leaves_the_expected_rate_measured() -> None:
    """A hazard weighed 0 takes no part in the expected rate: it is computed, over clean alone here, so it is
    clean's escaped-failure rate."""
    rows, dear = _budgeted({"clean": 1.0, "corruption/gaussian-noise/3": 0.0})
    assert _metrics(rows, str(dear)) == {BUDGET_NOT_MEASURED}
    expected = rows["deployment", "expected_escaped_failure_rate"]
    clean = rows["clean", "escaped_failure_rate"]
    assert expected.n == clean.n
    assert expected.value == pytest.approx(clean.value, abs=1e-12)


def test_exposure_on_the_pending_trojan_hazard_is_refused_when_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``trojan/neural-cleanse`` is planned (so exposure on it passed validation) but measured as the triggers
    recovered, each its own hazard, so it could never give a rate: the expected rate was always stored as not
    measured, after the run. Exposure on it is now refused before any work, in one line saying what to do; a
    weight of 0 takes no part and stays allowed."""
    g = torch.Generator().manual_seed(0)
    trigger = Trigger(torch.zeros(1, 8, 8), torch.ones(1, 8, 8), target=1, source=trojans.NC)
    monkeypatch.setattr(trojans, "_recovered", lambda ctx: [trigger])
    ctx = AuditContext(_model(), AuditData(test=_data(40, g), val=_data(40, g)))
    ctx.planned_hazards = [trojans.PENDING]
    with pytest.raises(InputError) as info:
        _rows(ctx, exposure={"clean": 0.9, str(trojans.PENDING): 0.1})
    msg = str(info.value)
    assert "\n" not in msg and str(trojans.PENDING) in msg and "remove it from exposure" in msg

    rows = _rows(ctx, exposure={"clean": 1.0, str(trojans.PENDING): 0})
    assert "escaped_failure_rate" in _metrics(rows, str(Hazard.trojan(trigger.name)))
    assert "expected_escaped_failure_rate" in _metrics(rows, "deployment")
