"""The drift alarm: conformal p-values, the stated average run length checked by simulation, detection."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.guard import DriftAlarm


def test_p_values_by_hand() -> None:
    alarm = DriftAlarm(torch.tensor([1.0, 2.0, 2.0, 3.0]))
    u = torch.full((4,), 0.5, dtype=torch.float64)
    p = alarm.p_values(torch.tensor([0.0, 2.0, 2.5, 9.0]), u)
    # n = 4: 0.0 -> (4 + 0.5) / 5; 2.0 -> (1 + 0.5 * 3) / 5; 2.5 -> (1 + 0.5) / 5; 9.0 -> 0.5 / 5
    assert torch.allclose(p, torch.tensor([0.9, 0.5, 0.3, 0.1], dtype=torch.float64))


def test_bet_integrates_to_one() -> None:
    """E f(U) = 1 for U uniform (Monte Carlo; kappa > 1/2 keeps the variance finite: SE ~ 0.0005)."""
    alarm = DriftAlarm(torch.randn(10), kappa=0.7)
    p = 1.0 - torch.rand(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(alarm.bet(p).mean()) == pytest.approx(1.0, abs=0.005)


def _run_lengths(shift: float, reps: int, arl: float, n_val: int, cap: int, seed: int) -> torch.Tensor:
    """Inputs until the first alarm on streams N(shift, 1) against validation N(0, 1), a fresh validation
    set per replicate (capped at ``cap``)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.empty(reps)
    for r in range(reps):
        alarm = DriftAlarm(torch.randn(n_val, generator=g), arl=arl, seed=r)
        steps = 0
        while alarm.first_alarm is None and steps < cap:
            alarm.update(torch.randn(250, generator=g) + shift)
            steps += 250
        lengths[r] = alarm.first_alarm if alarm.first_alarm is not None else cap
    return lengths


def test_average_run_length_at_least_the_level() -> None:
    """The stated guarantee: mean inputs before a false alarm >= arl (here 50; a lower bound of the
    mean's 99% interval must clear ~0.9 arl, leaving room for the fixed-validation-set deviation)."""
    arl = 50.0
    lengths = _run_lengths(0.0, reps=300, arl=arl, n_val=500, cap=5000, seed=0)
    mean, se = float(lengths.mean()), float(lengths.std() / lengths.numel() ** 0.5)
    assert mean - 2.6 * se >= 0.9 * arl, (mean, se)


def test_unnormalised_bet_breaks_the_guarantee() -> None:
    """A wrong calibrator (E f(U) = 1.3) alarms far earlier on clean streams: the simulation catches it."""

    class Wrong(DriftAlarm):
        def bet(self, p: torch.Tensor) -> torch.Tensor:
            return 1.3 * super().bet(p)

    g = torch.Generator().manual_seed(1)
    first = []
    for r in range(100):
        a = Wrong(torch.randn(500, generator=g), arl=50.0, seed=r)
        a.update(torch.randn(400, generator=g))
        first.append(a.first_alarm or 400)
    assert sum(first) / len(first) < 0.5 * 50.0


def test_shift_is_detected_quickly() -> None:
    lengths = _run_lengths(2.0, reps=50, arl=1000.0, n_val=500, cap=5000, seed=2)
    assert float(lengths.max()) < 100  # at arl 1000, a 2-sd shift alarms within tens of inputs


def test_alarm_is_reproducible_and_latches() -> None:
    val = torch.randn(300, generator=torch.Generator().manual_seed(3))
    stream = torch.randn(200, generator=torch.Generator().manual_seed(4)) + 3.0
    a, b = DriftAlarm(val, arl=100, seed=7), DriftAlarm(val, arl=100, seed=7)
    ra, rb = a.update(stream), b.update(stream)
    assert torch.equal(ra, rb) and a.alarm and a.first_alarm == int(ra.nonzero()[0]) + 1
    assert a.alarms == int(ra.sum())
    a.reset()
    assert not a.alarm and a.statistic == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"arl": 1.0}, {"kappa": 1.0}, {"kappa": 0.0}],
)
def test_bad_settings_are_one_line(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError) as e:
        DriftAlarm(torch.randn(10), **kwargs)
    assert "\n" not in str(e.value)


def test_nan_scores_refused() -> None:
    with pytest.raises(InputError, match="NaN"):
        DriftAlarm(torch.randn(10)).update(torch.tensor([float("nan")]))


def test_shiryaev_roberts_recursion_by_hand() -> None:
    """R_t = (1 + R_{t-1}) kappa p_t^(kappa - 1) from R_0 = 0, an alarm where R_t >= A, then R restarts at 0;
    the uniforms U_t are the seeded generator's draws, in stream order."""
    val = torch.tensor([1.0, 2.0, 3.0, 4.0])
    stream = torch.tensor([9.0, 0.0, 2.5, 9.0, 9.0, 3.5])
    kappa, seed = 0.3, 11
    u = 1.0 - torch.rand(len(stream), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    greater = [0, 4, 2, 0, 0, 1]  # validation scores above each stream score (no ties)
    p = [(g + float(ui)) / 5 for g, ui in zip(greater, u, strict=True)]
    r, path = 0.0, []
    for pi in p:
        r = (1.0 + r) * kappa * pi ** (kappa - 1.0)
        path.append(r)
    assert path[0] > path[1] and path[3] > path[2]  # the recursion is not monotone
    level = path[3] * (1 - 1e-9)  # the 4th input reaches the level (the 1st stays below it)
    assert max(path[:3]) < level
    alarm = DriftAlarm(val, arl=level, kappa=kappa, seed=seed)
    raised = alarm.update(stream[:4])
    assert raised.tolist() == [False, False, False, True] and alarm.first_alarm == 4 and alarm.statistic == 0.0
    raised = alarm.update(stream[4:])  # restarted: R_5 = kappa p_5^(kappa - 1), R_6 = (1 + R_5) f(p_6)
    r5 = kappa * p[4] ** (kappa - 1.0)
    r6 = (1.0 + r5) * kappa * p[5] ** (kappa - 1.0)
    assert max(r5, r6) < level and r6 != pytest.approx(path[5])  # below the level, and not the unrestarted path
    assert raised.tolist() == [False, False] and alarm.statistic == pytest.approx(r6, rel=1e-12)
    assert alarm.steps == 6 and alarm.alarms == 1


def test_p_values_exactly_uniform_with_ties() -> None:
    """Under exchangeability (the test score is any one of the n + 1 scores, with equal chance) the
    randomised p-value is exactly uniform on (0, 1], also with heavy ties: its CDF averaged over which
    score is the test one, and over U (p is linear in U), is the identity."""
    pool = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 5.0])
    grid = torch.linspace(0.0, 1.0, 57, dtype=torch.float64)
    cdf = torch.zeros_like(grid)
    for j in range(len(pool)):
        alarm = DriftAlarm(torch.cat([pool[:j], pool[j + 1 :]]))
        s = pool[j : j + 1]
        lo = alarm.p_values(s, torch.zeros(1, dtype=torch.float64))  # U -> 0
        hi = alarm.p_values(s, torch.ones(1, dtype=torch.float64))  # U = 1
        cdf += ((grid - lo) / (hi - lo)).clamp(0.0, 1.0) / len(pool)
    torch.testing.assert_close(cdf, grid, rtol=0.0, atol=1e-12)
