"""Every check declares the metrics it can store, and the declaration holds (issue 12 point 4).

A gate on a metric outside its check's declared patterns is refused before the audit runs, so the
declarations must be complete: a conformance test holds them to every row a quick audit stores.
"""

import re

import pytest

from mlsafety.audit import CHECKS
from mlsafety.audit._gates import metric_problem, validate_gates
from mlsafety.core import InputError

NAMES = [n for n in CHECKS.available() if not n.startswith("test-")]


def undeclared(rows):  # type: ignore[no-untyped-def]
    """The stored rows whose metric a gate would be refused on (outside its check's declared patterns)."""
    return sorted({f"{r.check}: {r.metric}" for r in rows if metric_problem(r.check, r.metric)})


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_check_declares_its_metrics(name):
    metrics = CHECKS.get(name).metrics
    assert isinstance(metrics, tuple) and metrics, f"check {name!r} must declare metrics = (...)"
    assert len(set(metrics)) == len(metrics), f"check {name!r} declares a metric twice"
    for p in metrics:
        assert re.fullmatch(r"[a-z0-9_*]+", p) and p.count("*") <= 1, f"{name}: bad pattern {p!r}"
        assert p.strip("*_"), f"{name}: pattern {p!r} would match any metric"


def test_every_stored_metric_is_declared_by_its_check(quick_audit):
    _, result = quick_audit
    assert {r.check for r in result.rows} == set(NAMES)
    missing = undeclared(result.rows)
    assert not missing, "metrics stored but not declared: " + ", ".join(missing)


def test_a_declaration_that_drifts_is_caught(quick_audit, monkeypatch):
    """The conformance check itself fails when a check stores a metric it does not declare."""
    _, result = quick_audit
    monkeypatch.setattr(CHECKS.get("clean"), "metrics", ("accuracy",))
    assert undeclared(result.rows) == [f"clean: class_{c}_accuracy" for c in range(10)]


def test_misspelt_metric_gets_the_closest_declared_name():
    problem = metric_problem("clean", "acuracy")
    assert (
        problem == "check 'clean' stores no metric 'acuracy'; did you mean 'accuracy'? "
        "Its metrics: accuracy, class_*_accuracy, truncated_inputs"
    )
    # a pattern's * is filled from the metric's own words
    assert "did you mean 'class_3_accuracy'?" in metric_problem("clean", "class_3_acuracy")  # type: ignore[operator]
    assert "did you mean 'msp_auroc'?" in metric_problem("ood", "msp_aurox")  # type: ignore[operator]
    assert "did you mean 'ece_after_ts'?" in metric_problem("calibration", "ece_after_t")  # type: ignore[operator]
    # nothing close: no guess, the list only
    assert metric_problem("selective", "aurc_msp") == (
        "check 'selective' stores no metric 'aurc_msp'; its metrics: aurc, eaurc, augrc, risk_at_coverage, "
        "coverage_at_risk, *_aurc, *_eaurc, *_augrc, *_risk_at_coverage, *_coverage_at_risk"
    )
    for check, metric in [
        ("clean", "class_7_accuracy"),
        ("ood", "vim_fpr95_ood_positive"),
        ("certified", "denoised_abstain_rate_sigma_0_5"),
    ]:
        assert metric_problem(check, metric) is None


@pytest.mark.parametrize("metric", ["fpr_at_95_tpr", "msp_fpr_at_95_tpr"])
def test_the_old_fpr_name_points_to_both_new_ones(metric):
    stem = metric.removesuffix("fpr_at_95_tpr")
    problem = metric_problem("ood", metric)
    assert problem is not None and problem.startswith(f"metric '{metric}' was renamed; use '{stem}fpr95_id_positive'")
    assert f"or '{stem}fpr95_ood_positive' (OOD inputs as positive" in problem


def test_a_check_without_a_declaration_leaves_its_gates_to_after_the_run(counting_check, monkeypatch):
    """A third-party check registered without ``metrics`` cannot be checked before the run: its gates
    are matched against the stored rows afterwards (:func:`evaluate_gates`)."""
    assert counting_check.metrics == ()
    assert metric_problem("test-counting", "value_0") is None
    keys = validate_gates({"test-counting/clean/anything": 0.5}, {}, [counting_check()])
    assert [str(k) for k in keys] == ["test-counting/clean/anything"]
    monkeypatch.setattr(counting_check, "metrics", ("value_*",))  # once declared, held to it
    with pytest.raises(InputError, match=r"stores no metric 'anything'; its metrics: value_\*"):
        validate_gates({"test-counting/clean/anything": 0.5}, {}, [counting_check()])
