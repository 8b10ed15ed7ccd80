"""FMEA arithmetic: the documented bands, severity lookup, RPN and its ordering."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import Hazard, InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.systemic import (
    DEFAULT_SEVERITY,
    DETECTION_TABLE,
    OCCURRENCE_TABLE,
    SEVERITY_DEFAULTS,
    Outcome,
    detection_score,
    fmea_table,
    occurrence_score,
    severity_for,
)


def test_occurrence_bands_at_their_edges() -> None:
    assert occurrence_score(1.0) == 10
    assert occurrence_score(0.5) == 10
    assert occurrence_score(0.49) == 9
    assert occurrence_score(0.05) == 7
    assert occurrence_score(0.0499) == 6
    assert occurrence_score(0.0) == 1
    for lowest, score in OCCURRENCE_TABLE:
        assert occurrence_score(lowest) == score
    scores = [occurrence_score(p / 1000) for p in range(1001)]
    assert scores == sorted(scores)  # monotone in the failure rate
    with pytest.raises(InputError):
        occurrence_score(1.5)


def test_occurrence_bands_are_the_published_aiag_1995_rates() -> None:
    # AIAG PFMEA occurrence ranking (2nd ed. 1995): 1 in 2, 3, 8, 20, 80, 400, 2,000, 15,000, 150,000 -> 10..2
    published = {2: 10, 3: 9, 8: 8, 20: 7, 80: 6, 400: 5, 2000: 4, 15000: 3, 150000: 2}
    assert [(round(1 / lowest), score) for lowest, score in OCCURRENCE_TABLE] == list(published.items())
    for one_in, score in published.items():
        assert occurrence_score(1 / one_in) == score
        assert occurrence_score(1 / (one_in + 1)) == score - 1  # just below the band's lower edge
    assert occurrence_score(1 / 1_500_000) == 1


def test_detection_bands_at_their_edges() -> None:
    assert detection_score(1.0) == 10
    assert detection_score(0.9) == 9  # "above 0.90" is strict
    assert detection_score(0.2) == 4
    assert detection_score(0.21) == 5
    assert detection_score(0.01) == 1
    assert detection_score(0.0) == 1
    assert detection_score(None) == 10
    for above, score in DETECTION_TABLE:
        assert detection_score(min(1.0, above + 1e-9)) == score
    with pytest.raises(InputError):
        detection_score(-0.1)


def test_severity_lookup_longest_prefix_then_kind_default() -> None:
    over = {"adversarial": 9, "adversarial/pgd": 10, "ood/letters": 3}
    assert severity_for("adversarial/pgd/0.1", over) == 10
    assert severity_for("adversarial/fgsm/0.1", over) == 9
    assert severity_for("ood/letters", over) == 3
    assert severity_for("ood/noise", over) == SEVERITY_DEFAULTS["ood"]
    assert severity_for("something/else") == DEFAULT_SEVERITY
    assert severity_for("adversarial/pgd/0.1") == SEVERITY_DEFAULTS["adversarial"]
    with pytest.raises(InputError):
        severity_for("clean", {"clean": 11})
    with pytest.raises(InputError):
        severity_for("clean", {"clean": 2.5})  # type: ignore[dict-item]


def test_severity_reads_typed_hazards_most_specific_override_first() -> None:
    over = {"corruption": 4, "corruption/fog/3": 2, "corruption/fog": 3, "adversarial/pgd/0.10": 10}
    assert severity_for(Hazard.corruption("fog", 3), over) == 2
    assert severity_for(Hazard.corruption("fog", 5), over) == 3
    assert severity_for(Hazard.corruption("blur", 3), over) == 4
    # keys are read as hazards: 0.10 and 0.1 are the same radius; norm is not part of the key
    assert severity_for(Hazard.adversarial("pgd", 0.1, norm="l2"), over) == 10
    assert severity_for("corruption/fogs/3", over) == 4  # a family, not a string prefix
    with pytest.raises(InputError, match="severity is an integer"):
        severity_for("clean", {"corruption/fog/high": 3})


def _outcome(n: int, failed: int, caught: int) -> Outcome:
    f = torch.zeros(n, dtype=torch.bool)
    f[:failed] = True
    flag = torch.zeros(n, dtype=torch.bool)
    flag[:caught] = True
    return Outcome(f, flag)


def test_fmea_table_scores_rpn_and_order() -> None:
    outcomes = {
        "clean": _outcome(400, 4, 3),  # p = 0.01 -> O 5; miss 1/4 -> D 5
        "adversarial/pgd/0.1": _outcome(100, 60, 6),  # p = 0.6 -> O 10; miss 0.9 -> D 9
        "ood/noise": _outcome(50, 50, 50),  # p = 1 -> O 10; miss 0 -> D 1
        "corruption/blur/1": _outcome(100, 0, 0),  # no failure -> O 1, D 10
    }
    table = fmea_table(outcomes, {"ood": 4})
    by = {e.hazard: e for e in table}
    assert (by["clean"].severity, by["clean"].occurrence, by["clean"].detection) == (5, 5, 5)
    assert by["clean"].rpn == 125
    assert (by["adversarial/pgd/0.1"].occurrence, by["adversarial/pgd/0.1"].detection) == (10, 9)
    assert by["adversarial/pgd/0.1"].rpn == 8 * 10 * 9
    assert by["ood/noise"].rpn == 4 * 10 * 1
    assert by["corruption/blur/1"].rpn == 6 * 1 * 10
    assert by["corruption/blur/1"].miss_share is None
    assert by["clean"].failure_rate.value == pytest.approx(0.01)
    assert by["clean"].miss_share is not None and by["clean"].miss_share.value == pytest.approx(0.25)
    assert [e.hazard for e in table] == ["adversarial/pgd/0.1", "clean", "corruption/blur/1", "ood/noise"]
    rpns = [e.rpn for e in table]
    assert rpns == sorted(rpns, reverse=True)


def test_detection_is_monotone_in_the_miss_share() -> None:
    scores = [detection_score(m / 1000) for m in range(1001)]
    assert scores == sorted(scores) and scores[0] == 1 and scores[-1] == 10


def test_ranks_carry_the_band_range_of_their_exact_interval() -> None:
    # clean: 4 failures of 400 (p = 0.01, exact 95% interval [0.00273, 0.0254]): O bands 5 (>= 1/400) .. 6 (>= 1/80);
    # 1 of the 4 failures missed (0.25, interval [0.0063, 0.806]): D bands 1 (<= 0.01) .. 9 (> 0.75)
    e = fmea_table({"clean": _outcome(400, 4, 3)})[0]
    lo, hi = clopper_pearson(4, 400)
    assert (lo, hi) == pytest.approx((0.0027312, 0.0254048), abs=1e-6)
    assert e.occurrence_range == (occurrence_score(lo), occurrence_score(hi)) == (5, 6)
    m_lo, m_hi = clopper_pearson(1, 4)
    assert e.detection_range == (detection_score(m_lo), detection_score(m_hi)) == (1, 9)
    # RPN: S x O x D at the ends of the 97.5% ranges (Bonferroni over the two proportions)
    o_lo, o_hi = (occurrence_score(v) for v in clopper_pearson(4, 400, 0.975))
    d_lo, d_hi = (detection_score(v) for v in clopper_pearson(1, 4, 0.975))
    assert e.rpn_range == (5 * o_lo * d_lo, 5 * o_hi * d_hi)
    assert e.rpn_range[0] <= e.rpn <= e.rpn_range[1]
    for rank, (a, b) in ((e.occurrence, e.occurrence_range), (e.detection, e.detection_range)):
        assert a <= rank <= b


def test_a_hazard_without_failures_has_the_whole_detection_range() -> None:
    e = fmea_table({"corruption/blur/1": _outcome(100, 0, 0)})[0]
    assert e.detection == 10 and e.detection_range == (1, 10)  # no failure: the miss share is unknown
    assert e.occurrence_range == (1, occurrence_score(clopper_pearson(0, 100)[1]))
    assert e.rpn_range[0] == 6 * 1 * 1


def test_a_measured_range_never_leaves_out_the_score() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 300, (1,), generator=g))
        failed = int(torch.randint(0, n + 1, (1,), generator=g))
        caught = int(torch.randint(0, failed + 1, (1,), generator=g))
        e = fmea_table({"clean": _outcome(n, failed, caught)})[0]
        assert e.occurrence_range[0] <= e.occurrence <= e.occurrence_range[1]
        assert e.detection_range[0] <= e.detection <= e.detection_range[1]
        assert e.rpn_range[0] <= e.rpn <= e.rpn_range[1]
