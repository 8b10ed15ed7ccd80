"""Conformance over the check registry: every registered check is exercised the moment it exists."""

import json
import math

import pytest
import torch

from mlsafety.audit import CHECKS, PILLARS, AuditConfig, run_audit
from mlsafety.core import InputError

NAMES = [n for n in CHECKS.available() if not n.startswith("test-")]


@pytest.mark.parametrize("name", NAMES)
def test_declaration(name):
    cls = CHECKS.get(name)
    assert cls.pillar in PILLARS and cls.title and cls.description
    assert set(cls.quick) <= set(cls.defaults), "quick may only override declared parameters"
    json.dumps(cls.defaults), json.dumps(cls.quick)
    with pytest.raises(InputError, match="has no parameter"):
        cls(not_a_parameter=1)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_well_formed(quick_audit, name):
    _, result = quick_audit
    rows = [r for r in result.rows if r.check == name]
    assert rows, f"check {name} stored nothing"
    for r in rows:
        assert math.isfinite(r.value)
        if r.ci_low is not None:
            assert r.ci_low <= r.value + 1e-9 and r.value <= r.ci_high + 1e-9, r.key
        assert "/" not in r.metric and r.metric == r.metric.lower()


def test_model_left_unchanged_by_the_audit(quick_audit, digits_model):
    # the audit loads its own copy; run the checks again on ours through the engine's context
    from mlsafety.audit._context import AuditContext
    from mlsafety.audit._inputs import resolve_data
    from mlsafety.core import Classifier

    state = {k: v.clone() for k, v in digits_model.state_dict().items()}
    digits_model.train()
    try:  # the model is the session's shared fixture: back to eval mode whatever happens here
        flags = [p.requires_grad for p in digits_model.parameters()]
        cfg = AuditConfig(quick=True)
        ctx = AuditContext(Classifier(digits_model), resolve_data(cfg), quick=True)
        # the language-model checks do not apply to an image classifier (the engine stores their skip row)
        checks = [CHECKS.create(n, quick=True) for n in NAMES if CHECKS.get(n).not_applicable("image") is None]
        assert len(checks) >= len(NAMES) - 4
        ctx.check_params = {c.name: c.params for c in checks}
        ctx.planned_hazards = [h for c in checks for h in c.hazards(ctx)]
        for check in checks:
            check.run_tasks(ctx)
        assert digits_model.training and [p.requires_grad for p in digits_model.parameters()] == flags
        for k, v in digits_model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in digits_model.modules())
    finally:
        digits_model.eval()


def test_same_seed_gives_identical_stored_values(quick_audit, tmp_path):
    _, first = quick_audit
    again = run_audit(AuditConfig(quick=True, checks=NAMES), db=tmp_path / "again.sqlite", report="")
    assert {r.key: (r.value, r.ci_low, r.ci_high) for r in again.rows} == {
        r.key: (r.value, r.ci_low, r.ci_high) for r in first.rows
    }


def _interval_gaps(rows):  # type: ignore[no-untyped-def]
    """Rows that break the kind contract: an estimate without a valid 95% interval, or an unknown kind."""
    from mlsafety.audit._check import interval_problem

    return [
        f"{r.key} ({r.kind}): {problem}"
        for r in rows
        if (problem := interval_problem(r.kind, r.value, r.ci_low, r.ci_high)) is not None
    ]


def test_every_stored_row_is_an_estimate_with_its_interval_or_says_what_it_is(quick_audit):
    """Issue 12 point 11, over a full quick audit as stored: an estimate carries ci_low <= value <= ci_high;
    anything else is a decision, count or setting."""
    _, result = quick_audit
    gaps = _interval_gaps(result.rows)
    assert not gaps, f"{len(gaps)} rows: " + "; ".join(gaps[:20])
    kinds = {r.kind for r in result.rows}
    assert "estimate" in kinds and kinds <= {"estimate", "decision", "count", "setting"}


@pytest.mark.slow
def test_every_row_of_the_default_full_audit_is_an_estimate_with_its_interval_or_says_what_it_is(tmp_path):
    result = run_audit(AuditConfig(), db=tmp_path / "full.sqlite", report="")
    gaps = _interval_gaps(result.rows)
    assert not gaps, f"{len(gaps)} of {len(result.rows)} rows: " + "; ".join(gaps[:20])
    from mlsafety.audit._gates import metric_problem  # what a gate on the metric would be told

    undeclared = sorted({f"{r.check}/{r.metric}" for r in result.rows if metric_problem(r.check, r.metric)})
    assert not undeclared, "metrics stored but not declared by their check: " + ", ".join(undeclared)


def test_report_says_which_fpr_convention_and_shows_kinds(quick_audit):
    """The OOD tables state both FPR@95 conventions (issue 12 point 10); settings show as such (point 11)."""
    folder, _ = quick_audit
    html = (folder / "report.html").read_text(encoding="utf-8")
    for text in ("fpr95_id_positive", "fpr95_ood_positive", "OpenOOD v1.5", "ODIN", "S (setting)"):
        assert text in html, text
