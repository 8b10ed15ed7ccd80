"""The proxy-gaming monitor: Welch p-values by hand, the false-alarm rate under no gaming, power
under planted divergence."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mlsafety.core import InputError, NotFittedError, generator
from mlsafety.metrics import clopper_pearson
from mlsafety.monitoring.proxy_gaming import ProxyGamingMonitor, monitor_proxy_gaming


def _scores(g: torch.Generator, m: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A proxy that over-rates by ``shift`` (in sd units) and two trusted proxies; all share a signal."""
    signal = torch.randn(m, generator=g, dtype=torch.float64)
    proxy = signal + 0.5 * torch.randn(m, generator=g, dtype=torch.float64) + shift
    trusted = signal + 0.7 * torch.randn(2, m, generator=g, dtype=torch.float64)
    return proxy, trusted


def test_p_value_is_welchs_one_sided_test() -> None:
    g = generator(0, "monitor-welch")
    p0, t0 = _scores(g, 80)
    p1, t1 = _scores(g, 50, shift=0.4)
    mon = ProxyGamingMonitor(steps=1).fit(p0, t0)
    step = mon.update(p1, t1)
    d0 = p0 * mon.proxy_scale_ - (mon.trusted_scale_.unsqueeze(1) * t0).sum(0)
    d1 = p1 * mon.proxy_scale_ - (mon.trusted_scale_.unsqueeze(1) * t1).sum(0)
    want = stats.ttest_ind(d1.numpy(), d0.numpy(), equal_var=False, alternative="greater").pvalue
    assert step.p_value == pytest.approx(float(want), rel=1e-6)
    assert step.gap.ci_low < step.gap.value < step.gap.ci_high


def test_false_alarm_rate_under_no_gaming_is_at_most_alpha() -> None:
    g = generator(1, "monitor-null")
    runs, steps, alpha = 300, 8, 0.1
    alarms = 0
    for _ in range(runs):
        ref = _scores(g, 60)
        schedule = [_scores(g, 40) for _ in range(steps)]
        result = monitor_proxy_gaming(*ref, [p for p, _ in schedule], [t for _, t in schedule], alpha=alpha)
        alarms += result.alarm_step is not None
    low, _ = clopper_pearson(alarms, runs)
    assert low <= alpha  # the rate is not significantly above alpha


def test_fires_after_planted_divergence_and_not_before() -> None:
    g = generator(2, "monitor-power")
    fired = []
    for _ in range(20):
        ref = _scores(g, 200)
        schedule = [_scores(g, 200, shift=0.0 if k < 4 else 0.6) for k in range(8)]
        result = monitor_proxy_gaming(*ref, [p for p, _ in schedule], [t for _, t in schedule], alpha=0.05)
        fired.append(result.alarm_step)
    assert all(step is not None and step >= 5 for step in fired)
    assert sum(step == 5 for step in fired) >= 18


def test_margin_tolerates_small_drift() -> None:
    g = generator(3, "monitor-margin")
    ref = _scores(g, 400)
    drift = [_scores(g, 400, shift=0.2) for _ in range(3)]
    args = (*ref, [p for p, _ in drift], [t for _, t in drift])
    assert monitor_proxy_gaming(*args, margin=0.0).alarm_step == 1
    assert monitor_proxy_gaming(*args, margin=0.5).alarm_step is None


def test_misuse_is_one_line() -> None:
    g = generator(4, "monitor-misuse")
    p, t = _scores(g, 20)
    with pytest.raises(NotFittedError):
        ProxyGamingMonitor().update(p, t)
    mon = ProxyGamingMonitor(steps=1).fit(p, t)
    with pytest.raises(InputError, match="trusted scorers"):
        mon.update(p, t[:1])
    mon.update(p, t)
    with pytest.raises(InputError, match="planned for 1 steps"):
        mon.update(p, t)
    for call, match in [
        (lambda: ProxyGamingMonitor(alpha=0.0), "alpha"),
        (lambda: ProxyGamingMonitor().fit(p, t[:, :-1]), "trusted scores must be"),
        (lambda: ProxyGamingMonitor().fit(torch.ones(5), torch.randn(5)), "constant"),
        (lambda: monitor_proxy_gaming(p, t, [], []), "non-empty"),
    ]:
        with pytest.raises(InputError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
