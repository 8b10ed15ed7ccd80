"""Report views of the adversarial, certified, corruptions and trojans checks, on hand-made stored
rows: identity comes from hazard fields and params (names are rebuilt, never parsed)."""

from __future__ import annotations

from typing import Any

import pytest

from mlsafety.audit._check import StoredRow
from mlsafety.audit.checks._common import metric_name
from mlsafety.audit.views.adversarial import AdversarialView
from mlsafety.audit.views.certified import CertifiedView, certified_metric
from mlsafety.audit.views.corruptions import CorruptionsView
from mlsafety.audit.views.trojans import TrojansView, scanner_metric


def _row(check: str, hazard: str, metric: str, value: float, kind: str = "estimate", **params: Any) -> StoredRow:
    ci = (value - 0.1, value + 0.1) if kind == "estimate" else (None, None)
    return StoredRow(check, hazard, metric, value, ci[0], ci[1], 50, params, kind)


def test_metric_names_fold_identity_one_way() -> None:
    assert certified_metric("certified_accuracy", 0.25) == "certified_accuracy_sigma_0_25"
    assert certified_metric("abstain_rate", 0.5, denoised=True) == "denoised_abstain_rate_sigma_0_5"
    assert certified_metric("violation_rate", 1.0) == "violation_rate_sigma_1"
    assert scanner_metric("neural-cleanse", "anomaly_index", 3) == "neural_cleanse_anomaly_index_class_3"
    assert scanner_metric("activation-clustering", "flag_rate") == "activation_clustering_flag_rate"
    assert metric_name("broken_by", "apgd-t") == "broken_by_apgd_t"


def test_adversarial_view() -> None:
    rows = [
        _row("adversarial", f"adversarial/pgd/{e:g}", "robust_accuracy", v, attack="pgd", eps=e)
        for e, v in ((0.1, 0.8), (0.2, 0.5), (0.3, 0.1))
    ]
    rows += [
        _row("adversarial", "adversarial/pgd/0.2", "warning_zero_gradients", 1.0, "decision", message="masked"),
        _row("adversarial", "adversarial", "clean_accuracy_subset", 0.9),
    ]
    (headline,) = AdversarialView.headlines(rows)
    assert headline.label == "Robust accuracy (pgd, eps 0.2)" and headline.row.value == 0.5
    robust, flags = AdversarialView.tables(rows)
    assert [r[:2] for r in robust.rows] == [["pgd", "0.1"], ["pgd", "0.2"], ["pgd", "0.3"]]
    assert flags.rows == [["adversarial/pgd/0.2", "warning_zero_gradients", "masked"]]


def test_certified_view() -> None:
    rows = []
    for sigma, denoised in ((0.25, False), (0.5, False), (0.25, True)):
        for r, v in ((0.0, 0.9), (0.25, 0.7 if not denoised else 0.75)):
            m = certified_metric("certified_accuracy", sigma, denoised)
            rows.append(_row("certified", f"adversarial/any-l2/{r:g}", m, v, radius=r, sigma=sigma))
    rows.append(_row("certified", "clean", certified_metric("abstain_rate", 0.25), 0.1, sigma=0.25))
    (headline,) = CertifiedView.headlines(rows)
    assert headline.row.metric == "certified_accuracy_sigma_0_25" and headline.row.params["radius"] == 0.25
    curve, other = CertifiedView.tables(rows)
    assert curve.headers == ["L2 radius", "sigma 0.25", "sigma 0.5", "denoised sigma 0.25"]
    assert [r[0] for r in curve.rows] == ["0", "0.25"] and curve.rows[1][3].startswith("0.75 ")
    assert [r[1] for r in other.rows] == ["abstain_rate_sigma_0_25"]
    # the headline is the best of the noise levels on these inputs, so it names the one it shows
    assert headline.label == "Certified L2 accuracy at r = 0.25 (sigma 0.25, best of 2)"
    flag = StoredRow("certified", "clean", "consistency_flag", 1.0, None, None, None, {}, "decision")
    *_, other = CertifiedView.tables([*rows, flag])
    assert other.rows[-1][3:] == ["(decision)", ""]  # no empty interval, no 'None'


def test_corruptions_view() -> None:
    rows = [
        _row("corruptions", "corruption/fog/1", "accuracy", 0.8),
        _row("corruptions", "corruption/fog/3", "not_applicable", 1.0, "decision", reason="no-op"),
        _row("corruptions", "corruption/fog", "ce", 0.3),
        _row("corruptions", "corruption", "mce", 0.3, normalised=False),
    ]
    assert [h.label for h in CorruptionsView.headlines(rows)] == ["mCE (mean error)"]
    tables = {t.title: t for t in CorruptionsView.tables(rows)}
    assert tables["Accuracy per corruption and severity"].rows == [["fog", "0.8", "n/a", "0.3"]]
    assert tables["Corruption summary"].rows[0][0] == "mce"
    norm = [
        _row("corruptions", "corruption", m, 0.7, normalised=True) for m in ("mean_accuracy", "mce", "relative_mce")
    ]
    labels = [r[0] for r in {t.title: t for t in CorruptionsView.tables(norm)}["Corruption summary"].rows]
    assert labels == ["mean accuracy", "mce (AlexNet-normalised)", "relative mce (AlexNet-normalised)"]
    assert [r[:2] for r in tables["Not applicable to these images (not run, not counted in CE or mCE)"].rows] == [
        ["fog", "3"]
    ]


def test_trojans_view() -> None:
    rows = [
        _row("trojans", "clean", scanner_metric("strip", "score"), 0.2, threshold=0.5, score_std=0.0),
        _row("trojans", "clean", scanner_metric("strip", "flagged"), 0.0, "decision"),
        _row("trojans", "clean", scanner_metric("neural-cleanse", "score"), 3.0, threshold=2.0, score_std=0.1),
        _row("trojans", "clean", scanner_metric("neural-cleanse", "flagged"), 1.0, "decision"),
        _row("trojans", "clean", scanner_metric("neural-cleanse", "target"), 7.0, "decision"),
        *[
            _row("trojans", "clean", scanner_metric("neural-cleanse", "anomaly_index", c), float(c), mask_l1=1.0)
            for c in range(3)
        ],
        _row("trojans", "trojan/neural-cleanse-class-7", "attack_success_rate", 0.95),
    ]
    assert [h.row.metric for h in TrojansView.headlines(rows)] == ["neural_cleanse_score"]
    verdicts, per_class, hazards = TrojansView.tables(rows)
    assert [(r[0], r[4], r[6]) for r in verdicts.rows] == [("strip", "clean", ""), ("neural-cleanse", "TROJANED", "7")]
    assert [r[0] for r in per_class.rows] == ["0", "1", "2"]
    assert hazards.rows[0][0] == "trojan/neural-cleanse-class-7"


@pytest.mark.parametrize(
    ("score", "flagged", "verdict"),
    [
        (2.76, 1.0, "TROJANED (inconclusive: the interval reaches clean)"),  # 2.76 [0.78, 5.40]
        (1.5, 0.0, "clean (inconclusive: the interval reaches TROJANED)"),
        (6.0, 1.0, "TROJANED"),
        (0.5, 0.0, "clean"),
    ],
)
def test_trojan_verdict_says_when_the_interval_holds_the_threshold(score: float, flagged: float, verdict: str) -> None:
    nc = scanner_metric("neural-cleanse", "score")
    lo, hi = (0.78, 5.40) if score in (2.76, 1.5) else (score - 0.5, score + 0.5)
    rows = [
        StoredRow("trojans", "clean", nc, score, lo, hi, 10, {"threshold": 2.0, "score_std": 0.1}, "estimate"),
        _row("trojans", "clean", scanner_metric("neural-cleanse", "flagged"), flagged, "decision"),
    ]
    (verdicts,) = TrojansView.tables(rows)
    assert verdicts.rows[0][4] == verdict


def test_report_shows_the_curve_before_the_pairs_whatever_task_stored_them_first(tmp_path) -> None:
    from mlsafety.audit import Artifact, Row, Store
    from mlsafety.audit._report import render_report

    with Store(tmp_path / "r.sqlite") as store:
        run = store.create_run("m", "d", 0, "fp", {}, "0")
        row = Row("adversarial/pgd/0.1", "robust_accuracy", 0.5, 0.4, 0.6, 50, {"attack": "pgd", "eps": 0.1})
        # the headline attack task stores the pairs; the plots task, last, stores the curve
        pairs = Artifact("adversarial-pairs", b"p", caption="PAIRS-CAPTION")
        curve = Artifact("robust-accuracy-curve", b"c", caption="CURVE-CAPTION")
        extra = Artifact("extra-picture", b"e", caption="EXTRA-CAPTION")
        store.write_task(run, "adversarial", "adversarial/pgd/0.1", [row], [pairs], 1.0)
        store.write_task(run, "adversarial", "plots", [], [curve, extra], 0.1)
        store.finish_run(run)
        html = render_report(store, run)
    assert html.index("CURVE-CAPTION") < html.index("PAIRS-CAPTION") < html.index("EXTRA-CAPTION")


@pytest.mark.parametrize("check", ["adversarial", "certified", "corruptions", "defence-in-depth", "trojans",
                                   "transparency", "tta"])  # fmt: skip
def test_what_a_budget_left_out_is_listed_with_its_reason_in_one_table(check: str) -> None:
    # a not-measured row is no sanity flag, trigger or hazard figure: it was dropped (corruptions,
    # defence in depth), shown as a flag with no meaning (adversarial) or with an empty interval
    from mlsafety.audit import CHECKS
    from mlsafety.audit._budget import not_measured_row

    row = not_measured_row("adversarial/pgd/0.1", "pgd at eps 0.1")
    late = StoredRow(check, row.hazard, row.metric, row.value, None, None, None, dict(row.params), row.kind)
    tables = CHECKS.get(check).view.tables([late])
    (shown,) = [t for t in tables if any(row.hazard in cell for line in t.rows for cell in line)]
    assert shown.title == "Not measured before the deadline (--budget)"
    assert shown.rows == [["adversarial/pgd/0.1", row.params["reason"]]]
