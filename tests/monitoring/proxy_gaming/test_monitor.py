"""The proxy-gaming monitor: the residual test by hand, its false-alarm rate UNDER best-of-n selection
in a world with no gaming (where the old mean-disagreement test fired every time), power under a
planted over-optimisation, margin and misuse."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mlsafety.core import InputError, NotFittedError, generator
from mlsafety.metrics import clopper_pearson
from mlsafety.monitoring.proxy_gaming import ProxyGamingMonitor, best_of_n_probs, monitor_proxy_gaming
from mlsafety.monitoring.proxy_gaming.monitor import best_of_n_monitor

NS = [2, 4, 8, 16, 32]


def _world(g: torch.Generator, shape: tuple[int, ...], gaming: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Proxy = signal + hack; trusted = an independent noisy copy of the gold = signal - gaming * relu(hack)^2.

    ``gaming`` 0: the gold (and the trusted) rise linearly with the proxy in expectation: no gaming.
    """
    signal = torch.randn(shape, generator=g, dtype=torch.float64)
    hack = torch.randn(shape, generator=g, dtype=torch.float64)
    gold = signal - gaming * torch.relu(hack) ** 2
    return signal + hack, gold + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)


def _best_of(g: torch.Generator, k: int, n: int, gaming: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` independent best-of-n outputs by the proxy."""
    p, t = _world(g, (k, n), gaming)
    i = p.argmax(1, keepdim=True)
    return p.gather(1, i).squeeze(1), t.gather(1, i).squeeze(1)


def test_step_is_the_regression_residual_test_by_hand() -> None:
    g = generator(0, "monitor-hand")
    p0, t0 = _world(g, (80,))
    p1, t1 = _best_of(g, 30, 8)
    step = ProxyGamingMonitor(steps=1).fit(p0, t0).update(p1, t1)
    z0, w0 = (p0 - p0.mean()) / p0.std(), (t0 - t0.mean()) / t0.std()
    z1, w1 = (p1 - p0.mean()) / p0.std(), (t1 - t0.mean()) / t0.std()
    fit = stats.linregress(z0.numpy(), w0.numpy())
    e = w1 - fit.intercept - fit.slope * z1
    s2 = float(((w0 - fit.intercept - fit.slope * z0) ** 2).sum()) / 78
    va = float(e.var()) / 30
    vb = s2 * (1 / 80 + float(z1.mean() - z0.mean()) ** 2 / float(((z0 - z0.mean()) ** 2).sum()))
    df = (va + vb) ** 2 / (va**2 / 29 + vb**2 / 78)
    assert step.gap.value == pytest.approx(-float(e.mean()), abs=1e-9)
    assert step.p_value == pytest.approx(float(stats.t.sf(-float(e.mean()) / math.sqrt(va + vb), df)), rel=1e-6)
    assert step.gap.ci_low < step.gap.value < step.gap.ci_high


def test_false_alarm_rate_under_best_of_n_selection_without_gaming() -> None:
    # the rate itself must not exceed alpha (not merely fail to be significantly above it: with 120 runs that
    # passed at a true rate of ~15%); the mean-disagreement test fired in every run here. The rate sits close
    # to alpha in this small world (40 outputs per step), so the point estimate is asserted, not the bound
    g = generator(1, "monitor-null")
    runs, alpha, alarms = 4000, 0.1, 0
    for _ in range(runs):
        steps = [_best_of(g, 40, n) for n in NS]  # the proxy's best of n: p rises more than t
        ref = _world(g, (200,))
        result = monitor_proxy_gaming(*ref, [p for p, _ in steps], [t for _, t in steps], alpha=alpha)
        alarms += result.alarm_step is not None
    assert alarms / runs <= alpha


def _finite_run(g: torch.Generator, with_ids: bool, alpha: float, k: int = 256, m: int = 400) -> bool:
    """A finite space of ``k`` outputs, trusted = 0.7 proxy + noise drawn ONCE PER OUTPUT (no gaming), and
    ``m`` draws per step from the exact best-of-n distribution: at n = 64 they fall on a few dozen outputs."""
    p = torch.randn(k, generator=g, dtype=torch.float64)
    t = 0.7 * p + math.sqrt(1 - 0.7**2) * torch.randn(k, generator=g, dtype=torch.float64)
    pi0 = torch.full((k,), 1.0 / k, dtype=torch.float64)
    ns = [2, 4, 8, 16, 32, 64]
    probs = best_of_n_probs(pi0, p, ns)
    ref = torch.multinomial(pi0, m, replacement=True, generator=g)
    picks = [torch.multinomial(probs[i], m, replacement=True, generator=g) for i in range(len(ns))]
    ids = {"ref_ids": ref, "step_ids": picks} if with_ids else {}
    args = (p[ref], t[ref], [p[i] for i in picks], [t[i] for i in picks])
    return monitor_proxy_gaming(*args, alpha=alpha, **ids).alarm_step is not None


def test_false_alarm_rate_holds_when_selected_outputs_repeat_given_ids() -> None:
    # counting repeated draws of one output as independent made the standard error too small: without ids
    # this world alarms far above alpha (and the bench's best-of-256 over 4,096 outputs, at alpha 0.05: see
    # bench/results/proxy_gaming_sim.md, design new_without_ids)
    g = generator(7, "monitor-null-repeats")
    runs, alpha = 400, 0.1
    with_ids = sum(_finite_run(g, True, alpha) for _ in range(runs))
    assert clopper_pearson(with_ids, runs)[1] <= alpha
    without = sum(_finite_run(g, False, alpha) for _ in range(runs))
    assert clopper_pearson(without, runs)[0] > alpha  # the world does stress repeats


def test_repeating_a_step_output_under_its_id_changes_nothing() -> None:
    # with ids the unit is the distinct output: three copies of every draw are the same evidence
    g = generator(8, "monitor-ids-invariance")
    p0, t0 = _world(g, (300,))
    p1, t1 = _best_of(g, 50, 8)
    ref_ids, ids = torch.arange(300), 300 + torch.arange(50) // 2  # pairs of draws share an output
    t1 = t1[torch.arange(50) // 2 * 2]  # ... and so its scores
    p1 = p1[torch.arange(50) // 2 * 2]
    once = ProxyGamingMonitor(steps=1).fit(p0, t0, ref_ids).update(p1, t1, ids)
    thrice = ProxyGamingMonitor(steps=1).fit(p0, t0, ref_ids).update(p1.repeat(3), t1.repeat(3), ids.repeat(3))
    assert thrice.gap.value == pytest.approx(once.gap.value, abs=1e-12)
    assert thrice.p_value == pytest.approx(once.p_value, rel=1e-9)
    naive = ProxyGamingMonitor(steps=1).fit(p0, t0).update(p1.repeat(3), t1.repeat(3))
    assert naive.gap.ci_high - naive.gap.value < thrice.gap.ci_high - thrice.gap.value


def test_pool_false_alarm_rate_under_selection_without_gaming() -> None:
    g = generator(2, "monitor-pool-null")
    runs, alpha, alarms = 1000, 0.1, 0
    for _ in range(runs):
        proxy, trusted = _world(g, (8, 64))
        alarms += best_of_n_monitor(proxy, trusted, NS, alpha, generator=g).alarm_step is not None
    assert clopper_pearson(alarms, runs)[1] <= alpha


def test_fires_on_planted_over_optimisation() -> None:
    g = generator(3, "monitor-power")
    fired = [monitor_proxy_gaming(*_world(g, (1000,), 1.0), *zip(*[_best_of(g, 300, n, 1.0) for n in NS]))
             .alarm_step for _ in range(10)]  # fmt: skip
    assert sum(step is not None for step in fired) >= 8
    pool = [best_of_n_monitor(*_world(g, (32, 64), 1.0), NS, generator=g).alarm_step for _ in range(10)]
    assert sum(step is not None for step in pool) >= 8


def test_margin_tolerates_small_shortfall() -> None:
    g = generator(4, "monitor-margin")
    p0, t0 = _world(g, (2000,))
    p1, t1 = _world(g, (2000,))
    drift = [(p1, t1 - 0.1 * t1.std())]  # the trusted lag by 0.1 sd at every proxy value
    args = (p0, t0, [p for p, _ in drift], [t for _, t in drift])
    assert monitor_proxy_gaming(*args, margin=0.0).alarm_step == 1
    assert monitor_proxy_gaming(*args, margin=0.5).alarm_step is None


def test_misuse_is_one_line() -> None:
    g = generator(5, "monitor-misuse")
    p, t = _world(g, (20,))
    with pytest.raises(NotFittedError):
        ProxyGamingMonitor().update(p, t)
    mon = ProxyGamingMonitor(steps=1).fit(p, t)
    with pytest.raises(InputError, match="trusted scorers"):
        mon.update(p, torch.stack([t, t]))
    mon.update(p, t)
    with pytest.raises(InputError, match="planned for 1 steps"):
        mon.update(p, t)
    pp, tt = _world(g, (4, 16))
    for call, match in [
        (lambda: ProxyGamingMonitor(alpha=0.0), "alpha"),
        (lambda: ProxyGamingMonitor().fit(p, t[:-1]), "trusted scores must be"),
        (lambda: ProxyGamingMonitor().fit(torch.ones(5), torch.randn(5)), "constant"),
        (lambda: monitor_proxy_gaming(p, t, [], []), "non-empty"),
        (lambda: ProxyGamingMonitor().fit(p, t, torch.arange(20)).update(p, t), "both fit"),
        (lambda: ProxyGamingMonitor().fit(p, t).update(p, t, torch.arange(20)), "both fit"),
        (lambda: ProxyGamingMonitor().fit(p, t, torch.arange(19)), "one identity per output"),
        (lambda: ProxyGamingMonitor().fit(p, t, torch.arange(20.0)), "integer tensor"),
        (
            lambda: ProxyGamingMonitor().fit(p, t, torch.arange(20)).update(p, t, torch.zeros(20, dtype=torch.long)),
            "2 distinct",
        ),
        (lambda: monitor_proxy_gaming(p, t, [p], [t], ref_ids=torch.arange(20)), "together"),
        (lambda: best_of_n_monitor(pp, tt, [16]), r"\[2, 8\]"),
        (lambda: best_of_n_monitor(pp, tt[:, :8], [2]), "trusted scores must be"),
        (lambda: best_of_n_monitor(pp[:1], tt[:1], [2]), "at least 2 prompts"),
    ]:
        with pytest.raises(InputError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_pool_standard_error_matches_the_spread_of_the_shortfall_over_worlds() -> None:
    # the slope is fitted on the same halves whose best-of-n selections it is compared with (cross-fitting), so
    # its error and the selected residuals' largely cancel: adding the slope's variance to the prompts' instead
    # made the interval up to 5x too wide at small n (a false-alarm rate of 0.005 at alpha 0.1, and low power)
    g = generator(6, "monitor-pool-se")
    prompts, runs = 16, 300
    gaps, ses = [], []
    for _ in range(runs):
        steps = best_of_n_monitor(*_world(g, (prompts, 64)), NS, generator=g).steps
        gaps.append([s.gap.value for s in steps])
        ses.append([(s.gap.ci_high - s.gap.value) / stats.t.ppf(0.975, prompts - 1) for s in steps])
    ratio = torch.tensor(ses).mean(0) / torch.tensor(gaps).std(0)
    assert bool(((ratio > 0.8) & (ratio < 1.25)).all()), ratio
