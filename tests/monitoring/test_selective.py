"""Selective prediction: hand-computed curves and areas, ties, and the oracle."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, generator
from mlsafety.monitoring import selective as sel


def test_curve_without_ties_by_hand() -> None:
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    correct = torch.tensor([True, False, True, False])
    rc = sel.risk_coverage(conf, correct)
    torch.testing.assert_close(rc.coverage, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rc.risk, torch.tensor([0.0, 0.5, 1 / 3, 0.5], dtype=torch.float64))
    # AURC = mean of the risks of the n most confident (Geifman et al.)
    assert float(sel.aurc(conf, correct)) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # AUGRC: trapezoids from (0, 0) through (.25, 0), (.5, .25), (.75, .25), (1, .5)
    assert float(sel.augrc(conf, correct)) == pytest.approx(0.25 * (0 + 0.25 / 2 + 0.25 + 0.75 / 2))


def test_ties_make_one_point() -> None:
    conf = torch.tensor([0.9, 0.5, 0.5, 0.1])
    correct = torch.tensor([True, True, False, False])
    rc = sel.risk_coverage(conf, correct)
    torch.testing.assert_close(rc.coverage, torch.tensor([0.25, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rc.threshold, torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64))
    # step-wise area: .25 * 0 + .5 * (1/3) + .25 * (2/4)
    assert float(sel.aurc(conf, correct)) == pytest.approx(0.5 / 3 + 0.125)
    # the order of the tied inputs must not matter
    swapped = sel.aurc(conf, torch.tensor([True, False, True, False]))
    assert float(swapped) == pytest.approx(float(sel.aurc(conf, correct)))


def test_oracle_has_zero_excess_and_eaurc_is_nonnegative() -> None:
    g = generator(0, "eaurc")
    correct = torch.rand(200, generator=g) < 0.8
    # an oracle without ties: correct ones first, in distinct confidences
    oracle_conf = correct.double() + torch.linspace(0, 0.5, 200)
    assert float(sel.eaurc(oracle_conf, correct)) == pytest.approx(0.0, abs=1e-12)
    assert float(sel.eaurc(torch.rand(200, generator=g), correct)) > 0
    # the discrete oracle AURC for e errors out of n, by hand
    n, e = 200, int((~correct).sum())
    oracle = sum((k - (n - e)) / k for k in range(n - e + 1, n + 1)) / n
    assert float(sel.aurc(oracle_conf, correct)) == pytest.approx(oracle)
    # a tied oracle (confidence = correctness) pays for its ties: one step from coverage (n-e)/n to 1
    assert float(sel.aurc(correct.double(), correct)) == pytest.approx((e / n) ** 2)


def test_risk_at_coverage_and_coverage_at_risk() -> None:
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = torch.tensor([True, True, False, True, False])
    assert float(sel.risk_at_coverage(conf, correct, 0.4)) == pytest.approx(0.0)
    assert float(sel.risk_at_coverage(conf, correct, 0.5)) == pytest.approx(1 / 3)
    assert float(sel.coverage_at_risk(conf, correct, 0.0)) == pytest.approx(0.4)
    assert float(sel.coverage_at_risk(conf, correct, 0.25)) == pytest.approx(0.8)
    assert float(sel.coverage_at_risk(-conf, correct, 0.0)) == pytest.approx(0.0)


def test_batched_rows_equal_single_rows() -> None:
    g = generator(0, "rows")
    conf = torch.randint(0, 5, (3, 40), generator=g).double()  # many ties
    correct = torch.rand(3, 40, generator=g) < 0.7
    for fn in (sel.aurc, sel.augrc, sel.eaurc):
        rows = fn(conf, correct)
        for i in range(3):
            assert float(rows[i]) == pytest.approx(float(fn(conf[i], correct[i])))


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        sel.aurc(torch.rand(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(InputError, match="coverage"):
        sel.risk_at_coverage(torch.rand(3), torch.ones(3, dtype=torch.bool), 0.0)


@pytest.mark.parametrize("metric", ["aurc", "eaurc", "augrc", "risk_at_coverage", "coverage_at_risk"])
def test_weighted_metrics_equal_the_metrics_of_explicit_resamples(metric: str) -> None:
    # issue 12 point 6: the bootstrap weights inputs by their counts instead of copying them
    g = generator(0, "selective-weights", metric)
    conf = (torch.rand(150, generator=g) * 8).round() / 8  # many ties, some split across resamples
    correct = torch.rand(150, generator=g) < 0.7
    idx = torch.randint(0, 150, (25, 150), generator=g)
    w = torch.zeros(25, 150, dtype=torch.float64).scatter_add_(1, idx, torch.ones(25, 150, dtype=torch.float64))
    stats = sel.SelectiveStats(conf, correct)
    extra = {"risk_at_coverage": (0.7,), "coverage_at_risk": (0.2,)}.get(metric, ())
    want = getattr(sel, metric)(conf[idx], correct[idx], *extra)
    torch.testing.assert_close(getattr(stats, metric)(w, *extra), want, rtol=1e-12, atol=1e-15)
    one = getattr(stats, metric)(torch.ones(1, 150), *extra)[0]
    torch.testing.assert_close(one, getattr(sel, metric)(conf, correct, *extra), rtol=1e-12, atol=1e-15)


def test_evaluate_selective_gives_the_direct_values_with_intervals_from_named_seeds() -> None:
    from mlsafety.core import derive_seed
    from mlsafety.metrics import bootstrap_weighted

    g = generator(0, "evaluate-selective")
    conf = (torch.rand(200, generator=g) * 10).round() / 10
    correct = torch.rand(200, generator=g) < conf  # confident inputs are more often right
    res = sel.evaluate_selective(conf, correct, coverage=0.8, risk=0.1, n_boot=80, seed=5, stream=("s", "msp"))
    assert list(res.metrics) == list(sel.METRICS)
    assert res.metrics["aurc"].value == pytest.approx(float(sel.aurc(conf, correct)), rel=1e-12)
    assert res.metrics["risk_at_coverage"].value == float(sel.risk_at_coverage(conf, correct, 0.8))
    assert res.metrics["coverage_at_risk"].value == float(sel.coverage_at_risk(conf, correct, 0.1))
    stats = sel.SelectiveStats(conf, correct)
    want = bootstrap_weighted(stats.augrc, 200, 80, derive_seed(5, "s", "msp", "augrc"), name="augrc",
                              value=float(sel.augrc(conf, correct)))  # fmt: skip
    assert res.metrics["augrc"] == want
    assert torch.equal(res.curve.risk, sel.risk_coverage(conf, correct).risk)
    assert res.params("risk_at_coverage") == {"coverage": 0.8} and res.params("aurc") == {}
    assert sel.aurc(conf, correct) < sel.aurc(-conf, correct)  # the informative ranking has the smaller area
    for est in res.metrics.values():
        assert est.ci_low <= est.value <= est.ci_high


@pytest.mark.parametrize("levels", [0, 4])  # 0: no ties; 4: confidences on four levels (large tie groups)
def test_augrc_is_traubs_identity_with_the_failure_auroc(levels: int) -> None:
    # Traub et al. 2024: AUGRC = (1 - AUROC_f) acc (1 - acc) + (1 - acc)^2 / 2, the AUROC of telling
    # failures from successes by confidence counting ties half (brute force over all pairs here)
    g = generator(0, "augrc-identity", levels)
    conf = torch.rand(60, generator=g)
    if levels:
        conf = (conf * levels).floor()
    correct = torch.rand(60, generator=g) < 0.3 + 0.6 * conf / conf.max()
    good, bad = conf[correct], conf[~correct]
    above = (good[:, None] > bad[None, :]).double() + 0.5 * (good[:, None] == bad[None, :]).double()
    auroc_f, acc = float(above.mean()), float(correct.double().mean())
    want = (1 - auroc_f) * acc * (1 - acc) + 0.5 * (1 - acc) ** 2
    assert float(sel.augrc(conf, correct)) == pytest.approx(want, rel=1e-12)
    # every input tied: a coin-flip ranking, half the error rate
    assert float(sel.augrc(torch.zeros(60), correct)) == pytest.approx(0.5 * (1 - acc), rel=1e-12)


@pytest.fixture(scope="module")
def digits_ctx():  # type: ignore[no-untyped-def]
    from mlsafety import zoo
    from mlsafety.audit import AuditContext, AuditData
    from mlsafety.core import Classifier

    test = zoo.load_dataset("digits", "test")
    data = AuditData(test=test.subset(torch.arange(60)), val=zoo.load_dataset("digits", "val"))
    return AuditContext(Classifier(zoo.load_model("digits-cnn")), data, seed=0, quick=True)


def _check_rows(ctx, detectors):  # type: ignore[no-untyped-def]
    from mlsafety.audit import CHECKS
    from mlsafety.audit import checks as _checks  # noqa: F401  (registers the checks)

    check = CHECKS.create("selective", quick=True, detectors=detectors, n_boot=20)
    return [r for task in check.tasks(ctx) for r in task.run().rows]


def test_selective_check_takes_one_detector_name_as_a_list_of_one(digits_ctx) -> None:  # type: ignore[no-untyped-def]
    """``detectors = "msp"`` runs what ``detectors = ["msp"]`` runs (ood-basic took one name; selective refused it)."""
    alone = {r.metric: r.value for r in _check_rows(digits_ctx, "msp")}
    listed = {r.metric: r.value for r in _check_rows(digits_ctx, ["msp"])}
    assert set(alone) == set(listed) and "aurc" in alone and "msp_aurc" in alone
    assert alone == pytest.approx(listed)


@pytest.mark.parametrize("detectors", ["nosuch", ["nosuch"]])
def test_selective_check_refuses_an_unknown_name_in_one_line_listing_the_known(digits_ctx, detectors) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as err:
        _check_rows(digits_ctx, detectors)
    text = str(err.value)
    assert "\n" not in text and "'nosuch'" in text
    assert "msp" in text and "energy" in text  # the known names are listed


@pytest.mark.parametrize("detectors", [[], 5, ["msp", 5]])
def test_selective_check_refuses_what_is_not_names(digits_ctx, detectors) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="selective: detectors must be a non-empty list of names"):
        _check_rows(digits_ctx, detectors)
