"""Per-input bookkeeping: every rate checked against hand counts, and the exposure-weighted rate."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsafety.core import InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.systemic import Outcome, expected_escaped_rate, failures

T, F = True, False


def test_failures_wrong_label_or_ood() -> None:
    pred = torch.tensor([0, 1, 2, 2, 0])
    labels = torch.tensor([0, 2, 2, -1, -1])
    assert failures(pred, labels).tolist() == [F, T, F, T, T]
    logits = torch.nn.functional.one_hot(pred, 3).float()
    assert torch.equal(failures(logits, labels), failures(pred, labels))
    with pytest.raises(InputError):
        failures(pred, labels[:3])


def test_rates_match_hand_counts_and_exact_intervals() -> None:
    #            escaped  caught  caught  alarm  ok  ok  ok  escaped  ok  alarm
    failed = torch.tensor([T, T, T, F, F, F, F, T, F, F])
    flagged = torch.tensor([F, T, T, T, F, F, F, F, F, T])
    o = Outcome(failed, flagged)
    assert o.n == 10
    fr, cs, er, fa = o.failure_rate(), o.caught_share(), o.escaped_failure_rate(), o.false_alarm_rate()
    assert (fr.value, fr.n) == (0.4, 10)
    assert cs is not None and (cs.value, cs.n) == (0.5, 4)
    assert (er.value, er.n) == (0.2, 10)
    assert fa is not None and (fa.value, fa.n) == (pytest.approx(2 / 6), 6)
    assert o.caught_rate() == pytest.approx(0.2)
    assert (er.ci_low, er.ci_high) == pytest.approx(clopper_pearson(2, 10))
    assert (cs.ci_low, cs.ci_high) == pytest.approx(clopper_pearson(2, 4))
    # the three shares of the Swiss-cheese bar add up to one
    assert (1 - fr.value) + o.caught_rate() + er.value == pytest.approx(1.0)


def test_undefined_shares_are_none() -> None:
    all_ok = Outcome(torch.tensor([F, F]), torch.tensor([T, F]))
    assert all_ok.caught_share() is None
    assert all_ok.escaped_failure_rate().value == 0.0
    ood = Outcome(torch.tensor([T, T, T]), torch.tensor([T, F, F]))
    assert ood.false_alarm_rate() is None
    assert ood.escaped_failure_rate().value == pytest.approx(2 / 3)


def test_outcome_validates_shapes() -> None:
    with pytest.raises(InputError):
        Outcome(torch.tensor([T, F]), torch.tensor([T]))
    with pytest.raises(InputError):
        Outcome(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))


def test_worst_case_takes_the_worse_cell_per_input() -> None:
    a = Outcome(torch.tensor([T, T, F, F, T]), torch.tensor([F, T, F, T, T]))  # esc, caught, ok, alarm, caught
    b = Outcome(torch.tensor([T, T, T, F, F]), torch.tensor([T, F, T, F, F]))  # caught, esc, caught, ok, ok
    w = a.worst_case(b)
    assert w.failed.tolist() == [T, T, T, F, T]
    assert w.flagged.tolist() == [F, F, T, T, T]
    assert w.escaped_failure_rate().value >= max(a.escaped_failure_rate().value, b.escaped_failure_rate().value)
    with pytest.raises(InputError):
        a.worst_case(Outcome(torch.tensor([T]), torch.tensor([T])))


def test_expected_escaped_rate_weights_and_bounds() -> None:
    a = Outcome(torch.tensor([T, T, F, F]), torch.tensor([F, F, F, F]))  # escaped 2/4
    b = Outcome(torch.tensor([T, F, F, F, F, F, F, F, F, F]), torch.tensor([T] + [F] * 9))  # escaped 0/10
    est = expected_escaped_rate({"a": a, "b": b}, {"a": 1.0, "b": 3.0})
    assert est.value == pytest.approx(0.25 * 0.5 + 0.75 * 0.0)
    assert est.n == 14
    lo_a, hi_a = clopper_pearson(2, 4, 0.975)
    lo_b, hi_b = clopper_pearson(0, 10, 0.975)
    assert est.ci_low == pytest.approx(0.25 * lo_a + 0.75 * lo_b)
    assert est.ci_high == pytest.approx(0.25 * hi_a + 0.75 * hi_b)
    # only hazards with weight count; weights are relative
    assert expected_escaped_rate({"a": a, "b": b}, {"a": 2.0, "b": 0.0}).value == pytest.approx(0.5)


def test_expected_escaped_rate_rejects_bad_weights() -> None:
    a = Outcome(torch.tensor([T]), torch.tensor([F]))
    with pytest.raises(InputError, match="not measured"):
        expected_escaped_rate({"a": a}, {"zzz": 1.0})
    with pytest.raises(InputError):
        expected_escaped_rate({"a": a}, {"a": -1.0})
    with pytest.raises(InputError):
        expected_escaped_rate({"a": a}, {})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_rate_identities_hold_for_any_outcome(cells: list[tuple[bool, bool]]) -> None:
    failed = torch.tensor([c[0] for c in cells])
    flagged = torch.tensor([c[1] for c in cells])
    o = Outcome(failed, flagged)
    fr, er = o.failure_rate().value, o.escaped_failure_rate().value
    assert er <= fr
    assert (1 - fr) + o.caught_rate() + er == pytest.approx(1.0)
    cs = o.caught_share()
    if cs is not None:
        assert cs.value * fr == pytest.approx(o.caught_rate())
        assert er == pytest.approx(fr * (1 - cs.value))
    fa = o.false_alarm_rate()
    if fa is not None:
        assert fa.n == len(cells) - int(failed.sum())
    assert o.worst_case(o).escaped_failure_rate().value == er


@pytest.mark.parametrize("weight", [float("nan"), float("inf")])
def test_expected_escaped_rate_refuses_a_weight_that_is_not_finite(weight: float) -> None:
    """A NaN or infinite weight passed every check and made the estimate NaN (inf / inf), silently."""
    a, b = Outcome(torch.tensor([T, F]), torch.tensor([F, F])), Outcome(torch.tensor([F]), torch.tensor([F]))
    with pytest.raises(InputError, match="exposure weight of 'a' must be a finite number >= 0"):
        expected_escaped_rate({"a": a, "b": b}, {"a": weight, "b": 1.0})


def test_expected_escaped_rate_of_a_single_hazard_is_its_own_rate_and_exact_interval() -> None:
    """One hazard: no Bonferroni split (95% itself), the weight's scale does not matter, and all inputs failing
    unflagged is a rate of 1 with the exact one-sided lower end (0.025 ** (1 / n))."""
    n = 6
    o = Outcome(torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    est = expected_escaped_rate({"clean": o}, {"clean": 3.0})
    assert (est.value, est.ci_high, est.n) == (1.0, 1.0, n)
    assert est.ci_low == pytest.approx(0.025 ** (1 / n), rel=1e-9)
