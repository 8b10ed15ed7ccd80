"""Emergence monitor: planted step functions are found with an interval that holds them; noise is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, generator
from mlsafety.monitoring.interp.emergence import (
    change_point,
    detect_emergence,
    leading_indicators,
    probe_checkpoints,
)

STEPS = list(range(0, 3000, 100))


def planted(jump_at: int, before: float = 0.1, after: float = 0.95, n: int = 300, seed: int = 0) -> torch.Tensor:
    g = generator(seed, "planted")
    p = torch.tensor([after if s >= jump_at else before for s in STEPS])
    return torch.rand(len(STEPS), n, generator=g) < p[:, None]


def test_planted_step_is_found_and_inside_its_interval() -> None:
    e = detect_emergence(STEPS, planted(1700), threshold=0.5)
    assert e.emerged and e.step == 1700
    assert e.ci_low is not None and e.ci_high is not None
    assert e.ci_low <= 1700 <= e.ci_high
    assert e.emerged_share > 0.95
    assert e.accuracy[0].value < 0.2 and e.accuracy[-1].ci_low > 0.9


def test_gradual_rise_gives_a_wider_interval_that_holds_the_crossing() -> None:
    g = generator(1, "ramp")
    p = torch.linspace(0.0, 1.0, len(STEPS))  # crosses 0.5 between index 14 and 15
    out = torch.rand(len(STEPS), 200, generator=g) < p[:, None]
    e = detect_emergence(STEPS, out, threshold=0.5)
    assert e.step is not None and 1500 <= e.step <= 2200
    assert e.ci_low is not None and e.ci_high is not None and e.ci_low <= e.step <= e.ci_high


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_noise_only_series_do_not_emerge(level: float) -> None:
    g = generator(2, "noise", level)
    out = torch.rand(len(STEPS), 300, generator=g) < level
    e = detect_emergence(STEPS, out, threshold=0.5)
    assert not e.emerged and e.ci_low is None


def test_change_point_of_a_planted_step_and_leading_indicators() -> None:
    values = [3.0 if s < 900 else 1.0 for s in STEPS]
    assert change_point(STEPS, values) == 900
    noisy = torch.tensor(values) + 0.1 * torch.randn(len(STEPS), generator=generator(3, "cp"))
    assert change_point(STEPS, noisy) == 900
    outcomes = planted(1700)
    late = [0.0 if s < 2500 else 1.0 for s in STEPS]
    leads = leading_indicators(STEPS, {"late": late, "early": noisy}, outcomes, n_boot=100)
    assert leads.accuracy_step == 1700 and leads.accuracy_low <= 1700 <= leads.accuracy_high
    rows = [(r.name, r.step, r.lead, r.precedes) for r in leads.indicators]
    assert rows == [("early", 900, 800, True), ("late", 2500, -800, False)]
    early = leads.indicators[0]
    assert early.ci_low <= 900 <= early.ci_high and 0 < early.lead_low <= 800 <= early.lead_high


def test_a_measure_made_from_the_accuracy_itself_does_not_lead() -> None:
    g = generator(4, "ramp")
    p = torch.linspace(0.0, 1.0, len(STEPS))
    outcomes = torch.rand(len(STEPS), 200, generator=g) < p[:, None]
    error = 1 - outcomes.double().mean(1)  # a "progress measure" that is the test error
    leads = leading_indicators(STEPS, {"error": error, "accuracy": 2 * (1 - error) + 3}, outcomes, n_boot=100)
    rows = {r.name: r for r in leads.indicators}
    assert rows["error"].lead == 0 and not rows["error"].precedes
    assert rows["error"].lead_low <= 0 <= rows["error"].lead_high
    assert rows["accuracy"].lead == 0 and not rows["accuracy"].precedes


def test_probe_checkpoints_restores_the_model_and_feeds_the_monitor() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 7.0)
    model.train()
    x = torch.linspace(0.1, 1.0, 50)[:, None]
    ckpts = [(s, {"weight": torch.tensor([[1.0 if s >= 1200 else -1.0]])}) for s in STEPS]

    def probe(m: nn.Module) -> torch.Tensor:
        return m(x).squeeze(1) > 0

    steps, out = probe_checkpoints(ckpts, probe, model=model)
    assert steps == STEPS and out.shape == (len(STEPS), 50)
    assert float(model.weight.detach()) == 7.0 and model.training
    assert detect_emergence(steps, out).step == 1200
    loaders = [(s, (lambda w=w: _fixed(w["weight"]))) for s, w in ckpts]
    assert probe_checkpoints(loaders, probe)[1].equal(out)


def _fixed(w: torch.Tensor) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(w)
    return m


def test_bad_input_is_one_line() -> None:
    with pytest.raises(InputError, match="outcomes must be"):
        detect_emergence(STEPS, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="strictly increasing"):
        detect_emergence([0, 0], torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="need model="):
        probe_checkpoints([(0, {"weight": torch.ones(1, 1)})], lambda m: torch.ones(1))


def test_probe_checkpoints_restores_the_model_after_an_exception() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 7.0)

    def probe(m: nn.Module) -> torch.Tensor:
        raise RuntimeError("probe failed")

    with pytest.raises(RuntimeError, match="probe failed"):
        probe_checkpoints([(0, {"weight": torch.zeros(1, 1)})], probe, model=model)
    assert float(model.weight.detach()) == 7.0 and model.training


def _outcomes(counts: list[int], n: int = 20) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(counts)[:, None]


def test_the_rule_uses_two_sided_95_percent_exact_bounds() -> None:
    """Present means the exact two-sided 95% interval (scipy's Clopper-Pearson) lies above the threshold, absent
    below it. At 0.52 with 20 examples, 15 and 6 successes are inconclusive two-sided but decided at one-sided
    95% (bounds 0.544 and 0.508), so an error in the bounds' level moves the answer."""
    from scipy import stats

    threshold = 0.52
    ci = {k: stats.binomtest(k, 20).proportion_ci(0.95, "exact") for k in (5, 6, 15, 16)}
    assert ci[15].low < threshold < ci[16].low and ci[5].high < threshold < ci[6].high
    steps = [0, 100, 200, 300]
    assert detect_emergence(steps, _outcomes([5, 16, 16, 16]), threshold, n_boot=20).step == 100
    assert not detect_emergence(steps, _outcomes([5, 15, 15, 15]), threshold, n_boot=20).emerged
    assert not detect_emergence(steps, _outcomes([6, 16, 16, 16]), threshold, n_boot=20).emerged
    # present only from the last run on: a dip back into the inconclusive zone restarts the clock
    assert detect_emergence(steps, _outcomes([5, 16, 15, 16]), threshold, n_boot=20).step == 300


def test_change_point_is_the_least_squares_split_by_brute_force() -> None:
    g = generator(5, "brute")
    steps = list(range(0, 1300, 100))
    for _ in range(20):
        v = torch.randn(len(steps), generator=g, dtype=torch.float64).cumsum(0)
        sse = [float(((v[:i] - v[:i].mean()) ** 2).sum() + ((v[i:] - v[i:].mean()) ** 2).sum()) for i in range(1, 13)]
        assert change_point(steps, v) == steps[1 + min(range(len(sse)), key=sse.__getitem__)]
