"""DefenceInDepthEvaluator: the evaluation from precomputed outputs, checked against hand computations."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from mlsafety.core import InputError, Outputs, generator
from mlsafety.systemic import (
    DefenceInDepthEvaluator,
    HazardResult,
    Outcome,
    ScoredSet,
    failures,
    validation_escape,
)


def _logits(y: torch.Tensor, wrong: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Logits predicting ``y`` (confidently), or the next class where ``wrong``."""
    pred = torch.where(wrong, (y.clamp_min(0) + 1) % k, y.clamp_min(0))
    return 4.0 * torch.nn.functional.one_hot(pred, k).float()


class _Scores:
    """Detector ``a`` scores the first pixel, ``b`` its negative; records which names were asked for."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, x: torch.Tensor, outputs: Outputs, names: Sequence[str]) -> dict[str, torch.Tensor]:
        self.asked.append(list(names))
        table = {"a": x[:, 0], "b": -x[:, 0]}
        return {n: table[n] for n in names}


def _setting() -> tuple[DefenceInDepthEvaluator, _Scores, ScoredSet, ScoredSet]:
    g = generator(0, "evaluate")
    n = 200
    y = torch.randint(0, 3, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < 0.1
    x = torch.rand(n, 1, generator=g) * 0.5 + 0.5 * wrong[:, None]  # mistakes score high on ``a``
    scores = _Scores()
    ev = DefenceInDepthEvaluator(["a", "b"], scores, false_alarm_rate=0.1)
    val = ev.scored(x, Outputs(_logits(y, wrong), None), y)
    xo = torch.rand(n, 1, generator=g) * 0.5 + 0.5  # outliers score high on ``a`` too
    zeros = torch.zeros(n, dtype=torch.long)
    outliers = ev.scored(xo, Outputs(_logits(zeros, zeros.bool()), None), torch.full((n,), -1))
    return ev, scores, val, outliers


def test_choice_is_the_lowest_validation_escape_and_is_kept() -> None:
    ev, _, val, outliers = _setting()
    with pytest.raises(InputError, match="choose the monitor"):
        ev.monitor  # noqa: B018
    choice = ev.choose(val, outliers)
    assert list(choice.criteria) == ["confidence", "a", "a+confidence", "b", "b+confidence"]
    for m_name, est in choice.criteria.items():
        assert est.value >= choice.criteria[choice.monitor.name].value, m_name
    assert choice.monitor.detector == "a" and ev.monitor is choice.monitor  # ``a`` separates, ``b`` inverts
    mon = choice.monitor
    assert choice.criteria[mon.name].value == validation_escape(mon, val, outliers).value


def test_outcome_cells_and_rates_by_hand() -> None:
    ev, scores, val, outliers = _setting()
    ev.choose(val, outliers)
    g = generator(1, "test")
    n = 120
    y = torch.randint(0, 3, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < 0.3
    x = torch.rand(n, 1, generator=g)
    out = Outputs(_logits(y, wrong), None)
    scores.asked.clear()
    o = ev.outcome(x, out, y)
    assert scores.asked == [[ev.monitor.detector]]  # only the monitor's own detector is scored
    failed = failures(out.logits, y)
    flagged = ev.monitor.flags(x[:, 0], out.probs.amax(dim=1))
    assert torch.equal(o.failed, failed) and torch.equal(o.flagged, flagged)
    est = HazardResult(o).estimates()
    assert list(est) == ["failure_rate", "caught_share", "escaped_failure_rate", "false_alarm_rate"]
    assert est["escaped_failure_rate"].value == pytest.approx(float((failed & ~flagged).float().mean()))
    assert est["caught_share"].n == int(failed.sum())
    assert est["false_alarm_rate"].value == pytest.approx(float(flagged[~failed].float().mean()))
    ood = HazardResult(ev.outcome(x, out, torch.full((n,), -1))).estimates()
    assert "false_alarm_rate" not in ood and ood["failure_rate"].value == 1.0  # no answer is right on OOD inputs


def test_adaptive_is_the_per_input_worst_case() -> None:
    ev, _, val, outliers = _setting()
    ev.choose(val, outliers)
    y = torch.tensor([0, 1, 2, 0])
    base = Outcome(torch.tensor([True, True, False, False]), torch.tensor([True, False, False, True]))
    x_adv = torch.tensor([[0.0], [0.0], [0.0], [0.0]])  # low ``a`` scores: never flagged by the detector
    out = Outputs(_logits(y, torch.tensor([True, False, True, False])), None)
    r = ev.adaptive(base, x_adv, out, y)
    assert r.adaptive_alone is not None and r.adaptive is not None and r.measured is r.adaptive
    assert r.adaptive_alone.failed.tolist() == [True, False, True, False]
    # worst case per input: escaped beats caught beats false alarm beats correct
    assert r.adaptive.escaped.tolist() == [True, True, True, False]
    assert r.estimates()["adaptive_escaped_failure_rate"].value == 0.75
    assert HazardResult(base).measured is base


def test_a_scores_function_returning_too_few_score_sets_is_refused() -> None:
    """Scores are paired with the names by position; one missing would silently shift every name after it."""

    def short(x: torch.Tensor, outputs: Outputs, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"a": x[:, 0]}

    ev = DefenceInDepthEvaluator(["a", "b"], short)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(InputError, match="returned 1 score sets for 2 detectors"):
        ev.scored(torch.rand(4, 1), Outputs(_logits(y, y.bool()), None), y)


def test_scores_keyed_by_the_names_are_read_by_name_whatever_their_order() -> None:
    """A scores function returning ``{name: scores}`` in another order than the names asked for gave each
    detector another's scores (paired by position); keys that are the names are read by name."""

    def reversed_order(x: torch.Tensor, outputs: Outputs, names: Sequence[str]) -> dict[str, torch.Tensor]:
        table = {"a": x[:, 0], "b": -x[:, 0]}
        return {n: table[n] for n in reversed(names)}

    ev = DefenceInDepthEvaluator(["a", "b"], reversed_order)
    y = torch.zeros(4, dtype=torch.long)
    x = torch.rand(4, 1, generator=generator(0, "order"))
    got = ev.scored(x, Outputs(_logits(y, y.bool()), None), y)
    torch.testing.assert_close(got.scores["a"], x[:, 0])
    torch.testing.assert_close(got.scores["b"], -x[:, 0])
