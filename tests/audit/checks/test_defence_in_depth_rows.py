"""Check ``defence-in-depth``: the FMEA rows' sample sizes are those of the proportions behind their ranges."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety.audit import CHECKS
from mlsafety.audit.checks.defence_in_depth import _State
from mlsafety.core import Hazard
from mlsafety.metrics import clopper_pearson
from mlsafety.systemic import DefenceInDepthEvaluator, HazardResult, Monitor, MonitorChoice, Outcome
from mlsafety.systemic._fmea import RPN_CONFIDENCE, detection_score, occurrence_score


def _summary(outcomes: dict[Hazard, Outcome]) -> dict[tuple[str, str], object]:
    """The summary task's rows for hazards whose outcomes are given (no model: the state holds the results)."""
    check = CHECKS.create("defence-in-depth")
    state = _State(SimpleNamespace(deadline=None), [])  # type: ignore[arg-type]
    state.results = {h: HazardResult(o) for h, o in outcomes.items()}
    ev = DefenceInDepthEvaluator([], lambda x, out, names: {})
    ev.choice_ = MonitorChoice(Monitor("confidence", confidence_threshold=0.5), {})
    state.evaluator = ev
    rows = check._summary_task(state, list(outcomes)).rows
    return {(r.hazard, r.metric): r for r in rows}


def test_fmea_ranges_and_sample_sizes_by_hand() -> None:
    """O's range is read off the failure rate's exact interval over all n inputs; D's off the miss share's over
    the k failed inputs, so D's row counts k inputs, not n (a hazard without failures: 0, range 1-10)."""
    n, k, missed = 400, 30, 12
    failed = torch.zeros(n, dtype=torch.bool)
    failed[:k] = True
    flagged = torch.zeros(n, dtype=torch.bool)
    flagged[missed:k] = True  # the first `missed` failures escape
    flagged[k : k + 7] = True  # and some false alarms, which D ignores
    rows = _summary({Hazard.clean(): Outcome(failed, flagged), Hazard.ood("x"): Outcome(failed[k:], flagged[k:])})

    occ, det, rpn = (rows["clean", m] for m in ("occurrence", "detection", "rpn"))
    o_lo, o_hi = clopper_pearson(k, n, 0.95)
    d_lo, d_hi = clopper_pearson(missed, k, 0.95)
    assert (occ.value, occ.ci_low, occ.ci_high, occ.n) == (
        occurrence_score(k / n),
        occurrence_score(o_lo),
        occurrence_score(o_hi),
        n,
    )
    assert (det.value, det.ci_low, det.ci_high, det.n) == (
        detection_score(missed / k),
        detection_score(d_lo),
        detection_score(d_hi),
        k,
    )
    wide_o, wide_d = clopper_pearson(k, n, RPN_CONFIDENCE), clopper_pearson(missed, k, RPN_CONFIDENCE)
    sev = rows["clean", "severity"].value
    assert (rpn.ci_low, rpn.ci_high) == (
        sev * occurrence_score(wide_o[0]) * detection_score(wide_d[0]),
        sev * occurrence_score(wide_o[1]) * detection_score(wide_d[1]),
    )
    none = rows["ood/x", "detection"]  # labels of in-distribution inputs on an "OOD" key: no failure at all
    assert (none.value, none.ci_low, none.ci_high, none.n) == (10, 1, 10, 0)


def test_without_training_data_thresholds_are_not_set_on_the_detectors_fit_inputs() -> None:
    """With no training data the detectors are fitted on validation data; setting the thresholds on the
    same inputs' (in-sample) scores made Mahalanobis look far more normal there than on new inputs: 28%
    false alarms on the clean test data at a 5% target. The thresholds now come from the validation
    inputs the detectors were not fitted on, so the test rate is of the target's order."""
    from mlsafety import zoo
    from mlsafety.audit import AuditContext, AuditData
    from mlsafety.core import Classifier

    data = AuditData(test=zoo.load_dataset("digits", "test"), val=zoo.load_dataset("digits", "val"))
    ctx = AuditContext(Classifier(zoo.load_model("digits-cnn")), data, seed=0)
    check = CHECKS.create("defence-in-depth", monitors=["mahalanobis"], adaptive=False)
    rows = [r for t in check.tasks(ctx) for r in t.run().rows]
    fa = next(r for r in rows if (r.hazard, r.metric) == ("clean", "false_alarm_rate"))
    assert fa.params["detector"] == "mahalanobis" and fa.n > 300
    assert fa.value < 0.12, fa
