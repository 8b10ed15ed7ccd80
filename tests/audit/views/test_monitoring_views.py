"""Views of the clean, calibration, calibration-basic, selective and transparency checks: tables and
headlines read stored rows only, and find rows by the names the checks build from row params."""

from __future__ import annotations

from typing import Any

from mlsafety.audit import CHECKS, StoredRow
from mlsafety.audit._check import DECISION
from mlsafety.audit.views.calibration import CalibrationView
from mlsafety.audit.views.calibration_basic import CalibrationBasicView
from mlsafety.audit.views.clean import CleanView
from mlsafety.audit.views.selective import SelectiveView, source_metric
from mlsafety.audit.views.transparency import TransparencyView, sanity_metric


def _row(check: str, metric: str, value: float, kind: str = "estimate", **params: Any) -> StoredRow:
    ci = (value - 0.01, value + 0.01) if kind == "estimate" else (None, None)
    return StoredRow(check, "clean", metric, value, ci[0], ci[1], 100, params, kind)


def test_checks_point_at_their_views() -> None:
    views = {"clean": CleanView, "calibration": CalibrationView, "calibration-basic": CalibrationBasicView,
             "selective": SelectiveView, "transparency": TransparencyView}  # fmt: skip
    for name, view in views.items():
        assert CHECKS.get(name).view is view


def test_calibration_table_puts_each_calibrator_in_its_column() -> None:
    rows = [_row("calibration", "ece", 0.10, n_bins=15, calibration="none"),
            _row("calibration", "ece_after_ts", 0.03, n_bins=15, calibration="temperature"),
            _row("calibration", "nll_after_vs", 0.50, calibration="vector"),
            _row("calibration", "nll", 0.70, calibration="none"),
            _row("calibration", "temperature", 1.8, fit="val")]  # fmt: skip
    table, temp = CHECKS.get("calibration").tables(rows)
    assert table.headers == ["metric (lower is better)", "before", "after temperature scaling", "after vector scaling"]
    assert [r[0] for r in table.rows] == ["ece", "nll"]  # METRICS order, not the rows' order
    assert table.rows[0][2].startswith("0.03 [") and table.rows[0][3] == ""
    assert table.rows[1][3].startswith("0.5 [") and temp.rows == [["1.8 [1.79, 1.81]"]]
    assert [h.label for h in CalibrationView.headlines(rows)] == ["ECE", "ECE after TS"]


def test_calibration_basic_lists_rows_under_its_title() -> None:
    rows = [_row("calibration-basic", "ece", 0.1, n_bins=15)]
    (table,) = CHECKS.get("calibration-basic").tables(rows)
    assert table.title == "Calibration (baseline)" and len(table.rows) == 1
    assert [h.label for h in CalibrationBasicView.headlines(rows)] == ["ECE"]


def test_selective_ranks_confidence_sources_by_aurc() -> None:
    rows = []
    for det, aurc in (("msp", 0.05), ("max-logit", 0.02), ("energy", 0.09)):
        rows.append(_row("selective", source_metric(det, "aurc"), aurc, detector=det))
        rows.append(_row("selective", source_metric(det, "risk_at_coverage"), aurc * 2, detector=det, coverage=0.9))
    rows.append(_row("selective", "aurc", 0.05, detector="msp"))  # the default source's plain name
    (table,) = SelectiveView.tables(rows)
    assert [r[0] for r in table.rows] == ["max-logit", "msp", "energy"]
    assert table.rows[0][1].startswith("0.02 [") and table.rows[0][2] == ""  # eaurc not stored
    assert [h.row.metric for h in SelectiveView.headlines(rows)] == ["aurc"]


def test_clean_table_labels_classes_from_params() -> None:
    rows = [_row("clean", "accuracy", 0.9), _row("clean", "class_3_accuracy", 0.8, label=3)]
    (table,) = CleanView.tables(rows)
    assert [r[0] for r in table.rows] == ["all classes", "class 3"]


def test_transparency_table_has_a_verdict_per_method_and_test() -> None:
    rows = []
    for method, rho in (("saliency", 0.2), ("input-x-gradient", 0.7)):
        common = {"method": method, "mode": "cascading", "threshold": 0.5, "stages": ["fc"]}
        rows.append(_row("transparency", sanity_metric(method, "cascading", "spearman"), rho, **common))
        rows.append(_row("transparency", sanity_metric(method, "cascading", "pass"), float(rho < 0.5), DECISION,
                         **common))  # fmt: skip
    rows.append(_row("transparency", "sanity_pass_share", 0.5, DECISION, passed=["saliency"]))
    rows.append(_row("transparency", "ig_completeness_gap", 0.01, steps=50, method="gausslegendre"))
    sanity, other = TransparencyView.tables(rows)
    assert sanity.headers == ["method", "cascading Spearman", "cascading SSIM", "cascading verdict"]
    assert sanity.rows == [["saliency", "0.2", "", "pass"], ["input-x-gradient", "0.7", "", "FAIL"]]
    assert [r[0] for r in other.rows] == ["sanity_pass_share", "ig_completeness_gap"]
    assert other.rows[0][2] == "(decision)" and other.rows[1][2] == "[0, 0.02]"  # an estimate keeps its interval
    assert [h.row.metric for h in TransparencyView.headlines(rows)] == ["sanity_pass_share"]


def test_selective_headline_names_the_default_source_and_headers_give_the_targets() -> None:
    # the plain rows are the configured default source's, which need not be MSP
    rows = [_row("selective", "aurc", 0.04, detector="energy"),
            _row("selective", source_metric("energy", "aurc"), 0.04, detector="energy"),
            _row("selective", source_metric("energy", "risk_at_coverage"), 0.1, detector="energy", coverage=0.9),
            _row("selective", source_metric("energy", "coverage_at_risk"), 0.6, detector="energy",
                 risk=0.02)]  # fmt: skip
    assert [h.label for h in SelectiveView.headlines(rows)] == ["AURC (confidence: -energy score)"]
    assert not SelectiveView.headlines(rows)[0].higher_is_better
    (table,) = SelectiveView.tables(rows)
    assert table.headers[-2:] == ["risk at coverage 0.9", "coverage at risk 0.02"]
    assert table.rows[0][-2:] == ["0.1 [0.09, 0.11]", "0.6 [0.59, 0.61]"]
    assert "same test data" in table.note  # the chosen threshold is not validated on new data


def test_selective_check_declares_every_metric_direction() -> None:
    from mlsafety.audit._gates import metric_direction

    for det in ("msp", "max-logit"):
        for metric, sign in (("aurc", -1), ("eaurc", -1), ("augrc", -1), ("risk_at_coverage", -1),
                             ("coverage_at_risk", 1)):  # fmt: skip
            for name in (metric, source_metric(det, metric)):
                assert metric_direction(_row("selective", name, 0.5, detector=det), []) == sign, name


def test_ethics_headline_names_the_data_it_was_measured_on() -> None:
    # the look-alike set is the project's own, not the ETHICS benchmark: the scorecard must not say ETHICS
    from mlsafety.alignment.evals import ETHICS_LOOKALIKE
    from mlsafety.audit.views.ethics import EthicsView

    rows = [_row("ethics", "zero_shot_accuracy", 0.6, source=ETHICS_LOOKALIKE),
            _row("ethics", "zero_shot_accuracy", 0.7, source="/data/ethics/commonsense/cm_test.csv")]  # fmt: skip
    labels = [h.label for h in EthicsView.headlines(rows)]
    assert labels == ["Ethics look-alike zero-shot clean", "ETHICS zero-shot clean"]


def test_truthfulness_and_ethics_tables_warn_of_contamination() -> None:
    # the issue asks for a contamination note: public benchmark files may be in the model's training data
    from mlsafety.audit.views.ethics import EthicsView
    from mlsafety.audit.views.truthfulness import TruthfulnessView

    tq = TruthfulnessView.tables([_row("truthfulness", "mc1", 0.3), _row("truthfulness", "mc2", 0.4)])
    ethics = EthicsView.tables([_row("ethics", "zero_shot_accuracy", 0.6, source="cm_test.csv")])
    for tables in (tq, ethics):
        assert len(tables) == 1
        assert "Contamination:" in tables[0].note and "training" in tables[0].note
