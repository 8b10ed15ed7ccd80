"""The OOD checks' report views read rows by their params, never by splitting metric or hazard names."""

from __future__ import annotations

from mlsafety.audit import StoredRow
from mlsafety.audit.views.ood import OODView, monitor_table
from mlsafety.audit.views.ood_basic import OODBasicView, detector_metric

MEASURES = ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive")


def _rows(detector: str, hazard: str, auroc: float, **params: object) -> list[StoredRow]:
    return [
        StoredRow("ood", hazard, detector_metric(detector, m), auroc if m == "auroc" else 0.5, 0.0, 1.0, 10,
                  {"detector": detector, **params})
        for m in MEASURES
    ]  # fmt: skip


def test_detector_metric_folds_dashes() -> None:
    assert detector_metric("max-logit", "auroc") == "max_logit_auroc"
    assert detector_metric("kl-matching", "fpr95_id_positive") == "kl_matching_fpr95_id_positive"


def test_ranking_and_groups_from_params() -> None:
    rows = [
        *_rows("max-logit", "ood/letters", 0.9, k=3),
        *_rows("msp", "ood/letters", 0.8),
        *_rows("max-logit", "ood-far", 0.7, sets=["letters"]),
        *_rows("msp", "ood-far", 0.6, sets=["letters"]),
        StoredRow("ood", "ood/letters", "auroc", 0.8, 0.7, 0.9, 10, {"detector": "msp"}),
    ]
    ranking, groups = OODView.tables(rows)
    assert [r[1] for r in ranking.rows] == ["max-logit", "msp"]  # by mean AUROC
    assert ranking.headers[3] == "letters AUROC / FPR@95 ID+ / FPR@95 OOD+"
    assert ranking.rows[0][-1] == "k=3 (paper defaults)"
    assert groups.headers == ["detector", "ood-far"]
    assert [r[0] for r in groups.rows] == ["max-logit", "msp"] and groups.rows[0][1].startswith("0.7 ")
    (headline,) = OODView.headlines(rows)
    assert headline.label == "OOD AUROC (msp) letters"  # the detector the row was measured with
    assert [h.label for h in OODBasicView.headlines(rows)] == ["OOD AUROC (msp) letters"]
    energy = [StoredRow("ood-basic", "ood/letters", "auroc", 0.7, 0.6, 0.8, 10, {"detector": "energy"})]
    assert [h.label for h in OODBasicView.headlines(energy)] == ["OOD AUROC (energy) letters"]  # default: energy
    assert len(OODBasicView.tables(rows)) == 1  # no group table in the baseline check


def test_monitor_table_lists_the_best_five_candidates() -> None:
    # the store returns params with sorted keys, so the candidates come back alphabetical, not by AUROC
    selection = {"ash": 0.91, "dice": 0.82, "energy": 0.90, "entropy": 0.92, "knn": 0.95, "mahalanobis": 0.99}
    row = StoredRow("ood", "clean", "monitored_detector", 6, None, None, 6,
                    {"detector": "mahalanobis", "rule": "chosen", "selection_auroc": selection}, "count")  # fmt: skip
    (table,) = monitor_table([row])
    assert table.rows[0][2] == "mahalanobis 0.99, knn 0.95, entropy 0.92, ash 0.91, energy 0.9"
