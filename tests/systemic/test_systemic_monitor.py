"""Monitors: thresholds at a false-alarm rate, flags, violation, and the choice on validation data."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, generator
from mlsafety.metrics import clopper_pearson
from mlsafety.systemic import (
    CONFIDENCE,
    Monitor,
    ScoredSet,
    candidate_monitors,
    choose_monitor,
    threshold_at_rate,
    validation_escape,
)


def test_threshold_keeps_exactly_k_above_without_ties() -> None:
    scores = torch.arange(20, dtype=torch.float32)  # 0..19
    t = threshold_at_rate(scores, 0.1)  # k = 2: 18 and 19 above
    assert t == 17.0
    assert int((scores > t).sum()) == 2
    assert threshold_at_rate(scores, 0.0) == 19.0  # nothing above the maximum


def test_threshold_never_exceeds_rate_with_ties_or_random_scores() -> None:
    g = generator(0, "thr")
    for n in (1, 7, 50, 333):
        s = torch.randint(0, 5, (n,), generator=g).float()  # heavy ties
        for rate in (0.0, 0.01, 0.05, 0.3, 0.9):
            t = threshold_at_rate(s, rate)
            assert float((s > t).float().mean()) <= rate + 1e-12
            assert t in s.tolist()


def test_threshold_rejects_bad_rates_and_scores() -> None:
    with pytest.raises(InputError):
        threshold_at_rate(torch.ones(3), 1.0)
    with pytest.raises(InputError):
        threshold_at_rate(torch.tensor([1.0, float("nan")]), 0.1)
    with pytest.raises(InputError):
        threshold_at_rate(torch.empty(0), 0.1)


def test_fit_uses_correct_answers_only_and_flags_by_both_parts() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])
    conf = torch.tensor([0.9, 0.8, 0.95, 0.99, 0.1])
    correct = torch.tensor([True, True, True, True, False])
    det = Monitor.fit("d", scores, correct, false_alarm_rate=0.25, detector="d")
    assert det.score_threshold == 2.0  # the wrong answer's 100 is ignored; k = 1 of 4 correct above
    assert det.flags(scores).tolist() == [False, False, False, True, True]
    conf_only = Monitor.fit("c", None, correct, false_alarm_rate=0.25, val_confidence=conf)
    assert conf_only.confidence_threshold == pytest.approx(0.9)
    assert conf_only.flags(confidence=conf).tolist() == [False, True, False, False, True]
    both = Monitor.fit("dc", scores, correct, 0.5, val_confidence=conf, confidence_share=0.5, detector="d")
    # each part gets 0.25 of the budget; a flag from either part counts
    assert both.flags(scores, conf).tolist() == [False, True, False, True, True]
    joint = float(both.flags(scores, conf)[correct].float().mean())
    assert joint <= 0.5


def test_violation_is_positive_exactly_when_flagged() -> None:
    g = generator(0, "viol")
    s, c = torch.randn(200, generator=g), torch.rand(200, generator=g)
    correct = torch.rand(200, generator=g) > 0.1
    mon = Monitor.fit("dc", s, correct, 0.1, val_confidence=c, detector="d")
    v = mon.violation(s, c)
    assert torch.equal(v > 0, mon.flags(s, c))


def test_monitor_needs_its_inputs() -> None:
    correct = torch.ones(4, dtype=torch.bool)
    with pytest.raises(InputError):
        Monitor.fit("x", None, correct)
    with pytest.raises(InputError):
        Monitor.fit("x", torch.ones(4), torch.zeros(4, dtype=torch.bool))
    mon = Monitor.fit("d", torch.arange(4.0), correct, detector="d")
    with pytest.raises(InputError):
        mon.flags(None, torch.ones(4))


def _set(failed: list[bool], conf: list[float], good: list[float], bad: list[float]) -> ScoredSet:
    return ScoredSet(torch.tensor(failed), torch.tensor(conf), {"good": torch.tensor(good), "bad": torch.tensor(bad)})


def test_choose_monitor_picks_the_detector_that_separates_outliers() -> None:
    n = 40
    g = generator(0, "choose")
    val = ScoredSet(
        torch.zeros(n, dtype=torch.bool),
        0.9 + 0.1 * torch.rand(n, generator=g),
        {"good": torch.rand(n, generator=g), "bad": torch.rand(n, generator=g)},
    )
    # outliers: "good" scores them far above any clean score, "bad" cannot tell, confidence stays high
    outliers = ScoredSet(
        torch.ones(n, dtype=torch.bool),
        0.9 + 0.1 * torch.rand(n, generator=g),
        {"good": 5 + torch.rand(n, generator=g), "bad": torch.rand(n, generator=g)},
    )
    cands = candidate_monitors(val, ["bad", "good"], false_alarm_rate=0.05)
    assert [m.name for m in cands] == [CONFIDENCE, "bad", f"bad+{CONFIDENCE}", "good", f"good+{CONFIDENCE}"]
    best, crit = choose_monitor(cands, val, outliers)
    assert best.name == "good"
    assert crit["good"].value == pytest.approx(0.0)  # every outlier caught, no clean failure
    assert crit["bad"].value > 0.4
    assert validation_escape(best, val, outliers) == crit["good"]


def test_validation_escape_interval_is_the_bonferroni_exact_one() -> None:
    # 2 escapes of 40 clean validation inputs, 10 of 20 outliers; each exact interval at 97.5%, averaged
    val = ScoredSet(torch.arange(40) < 2, torch.full((40,), 0.99), {"d": torch.zeros(40)})
    out = ScoredSet(torch.ones(20, dtype=torch.bool), torch.full((20,), 0.99), {"d": torch.arange(20.0)})
    mon = Monitor("d", detector="d", score_threshold=9.5)  # flags outliers 10..19 only (scores above)
    est = validation_escape(mon, val, out)
    a, b = clopper_pearson(2, 40, 0.975), clopper_pearson(10, 20, 0.975)
    assert est.value == pytest.approx(0.5 * 2 / 40 + 0.5 * 10 / 20)
    assert (est.ci_low, est.ci_high) == pytest.approx((0.5 * a[0] + 0.5 * b[0], 0.5 * a[1] + 0.5 * b[1]))
    assert est.n == 60 and est.ci_low < est.value < est.ci_high


def test_scored_set_needs_the_monitor_detector() -> None:
    s = _set([False, True], [0.9, 0.5], [0.1, 0.2], [0.3, 0.4])
    mon = Monitor.fit("other", torch.arange(2.0), torch.ones(2, dtype=torch.bool), detector="other")
    with pytest.raises(InputError):
        s.flags(mon)


def test_every_candidate_keeps_the_validation_false_alarm_budget() -> None:
    # the combined monitors split the budget, so their union of flags stays within it too (each part
    # with the whole budget would flag ~2x on independent scores)
    g = generator(0, "budget")
    for n, rate in ((200, 0.05), (333, 0.1), (50, 0.2)):
        failed = torch.rand(n, generator=g) < 0.2
        val = ScoredSet(failed, torch.rand(n, generator=g), {"d": torch.randn(n, generator=g)})
        for mon in candidate_monitors(val, ["d"], rate):
            flagged = val.flags(mon)[~failed]
            assert float(flagged.double().mean()) <= rate + 1e-12, mon.name
            # and the budget is used: floor(share * n_correct) flags per part on tie-free scores
            n_ok = int((~failed).sum())
            if mon.name in (CONFIDENCE, "d"):
                assert int(flagged.sum()) == int(rate * n_ok + 1e-9), mon.name
            else:
                k_conf, k_det = int(rate / 2 * n_ok + 1e-9), int((rate - rate / 2) * n_ok + 1e-9)
                assert max(k_conf, k_det) <= int(flagged.sum()) <= k_conf + k_det, mon.name


def test_combined_monitor_gives_confidence_its_share_and_the_detector_the_rest() -> None:
    # 100 correct answers, tie-free: rate 0.1 with confidence_share 0.2 -> confidence 0.02 (2 flags),
    # detector 0.08 (8 flags); swapping the shares would flag 8 by confidence and 2 by the detector
    g = generator(0, "share")
    s, c = torch.randn(100, generator=g), torch.rand(100, generator=g)
    correct = torch.ones(100, dtype=torch.bool)
    mon = Monitor.fit("dc", s, correct, 0.1, val_confidence=c, confidence_share=0.2, detector="d")
    assert mon.score_threshold == float(s.double().sort(descending=True).values[8])
    assert mon.confidence_threshold == float(c.double().sort().values[2])
    assert int((s > mon.score_threshold).sum()) == 8 and int((c < mon.confidence_threshold).sum()) == 2
    # shares 0 and 1 hand the whole budget to one part
    only_det = Monitor.fit("dc", s, correct, 0.1, val_confidence=c, confidence_share=0.0, detector="d")
    assert int(only_det.flags(s, c).sum()) == 10 and int((c < only_det.confidence_threshold).sum()) == 0


def test_violation_is_in_units_of_the_correct_answers_spread() -> None:
    # scale: the unbiased standard deviation of the correct answers' validation values (the wrong one's 9 is left out)
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0])
    conf = torch.tensor([0.6, 0.7, 0.8, 0.9, 0.2])
    correct = torch.tensor([True, True, True, True, False])
    mon = Monitor.fit("dc", scores, correct, 0.5, val_confidence=conf, detector="d")
    sd_s, sd_c = torch.tensor([0.0, 1.0, 2.0, 3.0]).std().item(), torch.tensor([0.6, 0.7, 0.8, 0.9]).std().item()
    assert (mon.score_scale, mon.confidence_scale) == pytest.approx((sd_s, sd_c))
    # k = floor(0.25 * 4) = 1 per part: score threshold 2 (3 above), confidence threshold 0.7 (0.6 below)
    assert (mon.score_threshold, mon.confidence_threshold) == pytest.approx((2.0, 0.7))
    v = mon.violation(torch.tensor([2.5, 0.0]), torch.tensor([0.9, 0.65]))
    # the larger of the two parts: (2.5 - 2) / sd_s vs (0.7 - 0.9) / sd_c; (0 - 2) / sd_s vs (0.7 - 0.65) / sd_c
    assert v.tolist() == pytest.approx([0.5 / sd_s, 0.05 / sd_c], rel=1e-5)


def test_fit_refuses_scores_and_answers_of_different_lengths() -> None:
    """Three scores and four answers crashed with torch's mask IndexError; one InputError line now."""
    correct = torch.ones(4, dtype=torch.bool)
    with pytest.raises(InputError, match="3 validation scores but 4 answers"):
        Monitor.fit("d", torch.arange(3.0), correct)
    with pytest.raises(InputError, match="5 validation confidences but 4 answers"):
        Monitor.fit(CONFIDENCE, None, correct, val_confidence=torch.rand(5))


def test_a_monitor_flagging_everything_catches_every_failure_and_lets_none_escape() -> None:
    """A confidence threshold above every confidence flags all inputs: caught share 1, escaped 0, false alarms 1."""
    from mlsafety.systemic import Outcome

    mon = Monitor(CONFIDENCE, confidence_threshold=2.0)
    failed = torch.tensor([True, False, True, False, False])
    o = Outcome(failed, mon.flags(None, torch.rand(5, generator=generator(0, "all"))))
    caught, escaped, alarms = o.caught_share(), o.escaped_failure_rate(), o.false_alarm_rate()
    assert caught is not None and alarms is not None
    assert (caught.value, caught.n, escaped.value, escaped.n, alarms.value, alarms.n) == (1.0, 2, 0.0, 5, 1.0, 3)
