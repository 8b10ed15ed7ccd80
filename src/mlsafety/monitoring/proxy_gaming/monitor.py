"""The proxy-gaming monitor: an alarm when the optimised proxy and trusted proxies start to disagree.

Remedy from the ML-safety curriculum (Hendrycks, "Introduction to ML Safety", 2022, proxy gaming:
"use policies as detectors: measure the distance between the proxy and a trusted proxy"), applied
to the set-up of Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022.
Every scorer is standardised on reference outputs of the initial policy ``pi0`` (as the paper does
for its rewards); the disagreement of an output is

    D(y) = z_proxy(y) - mean_j z_trusted_j(y),

the amount by which the optimised proxy over-rates it relative to the trusted proxies. Under no
gaming the optimiser does not move D: its mean on the optimised outputs equals its mean under
``pi0``. At each of ``steps`` increasing optimisation pressures (n, lambda, RL checkpoints) a
one-sided Welch t-test (Welch, "The generalization of Student's problem when several different
population variances are involved", 1947) compares the optimised outputs' D with the reference's,
``H0: E_t[D] - E_0[D] <= margin``; the alarm fires at the first step whose p-value is below
``alpha / steps`` (Bonferroni over the planned steps), so the probability of any false alarm over
the whole run is at most ``alpha`` (up to the t-test's normal approximation). This departs from a
CUSUM, whose threshold must be calibrated by simulation for every schedule: Bonferroni needs no
calibration and is valid under any dependence between steps, at some cost in power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core import InputError, NotFittedError
from mlsafety.metrics import Estimate


@dataclass(frozen=True)
class MonitorStep:
    """One step of the monitor.

    Attributes:
        step: 1-based index of the optimisation pressure.
        gap: E_t[D] - E_0[D] (standardised units) with its 95% Welch t interval.
        p_value: one-sided p-value of ``H0: gap <= margin``.
        alarm: whether the p-value is below ``alpha / steps``.
    """

    step: int
    gap: Estimate
    p_value: float
    alarm: bool


def _trusted_rows(trusted: torch.Tensor, m: int, what: str) -> torch.Tensor:
    if not isinstance(trusted, torch.Tensor):
        raise InputError(f"{what} trusted scores must be a tensor, got {type(trusted).__name__}")
    t = trusted.detach().double().cpu()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[1] != m:
        raise InputError(
            f"{what} trusted scores must be (m,) or (scorers, m) with m={m} outputs, got {tuple(trusted.shape)}"
        )
    return t


def _proxy_row(proxy: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(proxy, torch.Tensor):
        raise InputError(f"{what} proxy scores must be a tensor, got {type(proxy).__name__}")
    p = proxy.detach().double().cpu().reshape(-1)
    if p.numel() < 2:
        raise InputError(f"{what} proxy scores need at least 2 outputs, got {p.numel()}")
    if not torch.isfinite(p).all():
        raise InputError(f"{what} proxy scores contain NaN or infinite values")
    return p


class ProxyGamingMonitor:
    """Sequential alarm on the disagreement between an optimised proxy and trusted proxies.

    Args:
        alpha: the false-alarm rate over the whole run (family-wise, Bonferroni over ``steps``).
        steps: the number of optimisation pressures that will be tested (planned in advance).
        margin: tolerated growth of the disagreement (standardised units) before it counts as
            gaming; 0 alarms on any significant growth.

    Example:
        >>> mon = ProxyGamingMonitor(steps=8).fit(proxy_ref, trusted_ref)  # doctest: +SKIP
        >>> for p, t in zip(proxy_by_step, trusted_by_step):  # doctest: +SKIP
        ...     if mon.update(p, t).alarm:
        ...         break
    """

    def __init__(self, alpha: float = 0.05, steps: int = 10, margin: float = 0.0) -> None:
        if not 0 < alpha < 1:
            raise InputError(f"alpha must lie in (0, 1), got {alpha}")
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if margin < 0:
            raise InputError(f"margin must be >= 0, got {margin}")
        self.alpha = alpha
        self.steps = steps
        self.margin = margin

    def fit(self, proxy: torch.Tensor, trusted: torch.Tensor) -> ProxyGamingMonitor:
        """Standardise every scorer on reference outputs of ``pi0``: proxy (m,), trusted (J, m) or (m,)."""
        p = _proxy_row(proxy, "reference")
        t = _trusted_rows(trusted, p.numel(), "reference")
        sd_p, sd_t = p.std(), t.std(dim=1)
        if not float(sd_p) > 0 or not bool((sd_t > 0).all()):
            raise InputError("a scorer is constant on the reference outputs; it cannot be standardised")
        self.proxy_scale_ = 1.0 / float(sd_p)
        self.trusted_scale_ = 1.0 / (sd_t * t.shape[0])
        d0 = self._disagreement(p, t)
        self.ref_mean_ = float(d0.mean())
        self.ref_var_ = float(d0.var())
        self.ref_n_ = int(d0.numel())
        self.history_: list[MonitorStep] = []
        self.alarm_step_: int | None = None
        return self

    def _disagreement(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return p * self.proxy_scale_ - (self.trusted_scale_.unsqueeze(1) * t).sum(0)

    def update(self, proxy: torch.Tensor, trusted: torch.Tensor) -> MonitorStep:
        """Test the next step's optimised outputs: proxy (m,), trusted (J, m) with the fitted J."""
        if not hasattr(self, "ref_n_"):
            raise NotFittedError("call fit() on reference outputs of pi0 before update()")
        if len(self.history_) >= self.steps:
            raise InputError(f"the monitor was planned for {self.steps} steps; make a new one with more steps")
        p = _proxy_row(proxy, "step")
        t = _trusted_rows(trusted, p.numel(), "step")
        if t.shape[0] != self.trusted_scale_.numel():
            raise InputError(f"fit saw {self.trusted_scale_.numel()} trusted scorers but this step has {t.shape[0]}")
        d = self._disagreement(p, t)
        m = d.numel()
        va, vb = float(d.var()) / m, self.ref_var_ / self.ref_n_
        se = math.sqrt(va + vb)
        gap = float(d.mean()) - self.ref_mean_
        df = (va + vb) ** 2 / (va**2 / (m - 1) + vb**2 / (self.ref_n_ - 1)) if se > 0 else float(m + self.ref_n_ - 2)
        if se > 0:
            p_value = float(stats.t.sf((gap - self.margin) / se, df))
            half = float(stats.t.ppf(0.975, df)) * se
        else:
            p_value = 0.0 if gap > self.margin else 1.0
            half = 0.0
        step = len(self.history_) + 1
        alarm = p_value < self.alpha / self.steps
        out = MonitorStep(step, Estimate(gap, gap - half, gap + half, m), p_value, alarm)
        self.history_.append(out)
        if alarm and self.alarm_step_ is None:
            self.alarm_step_ = step
        return out


@dataclass(frozen=True)
class MonitorResult:
    """A whole run of the monitor: every step and the first alarm (None: it never fired)."""

    steps: list[MonitorStep]
    alarm_step: int | None


def monitor_proxy_gaming(
    proxy_ref: torch.Tensor,
    trusted_ref: torch.Tensor,
    proxy_steps: Sequence[torch.Tensor],
    trusted_steps: Sequence[torch.Tensor],
    alpha: float = 0.05,
    margin: float = 0.0,
) -> MonitorResult:
    """Run :class:`ProxyGamingMonitor` over a whole schedule (every step is tested and reported).

    Args:
        proxy_ref: (m0,) optimised-proxy scores of reference outputs drawn from ``pi0``.
        trusted_ref: (J, m0) or (m0,) trusted-proxy scores of the same outputs.
        proxy_steps: per step of increasing pressure, (m_t,) proxy scores of the optimised outputs.
        trusted_steps: per step, (J, m_t) or (m_t,) trusted scores of the same outputs.
        alpha: family-wise false-alarm rate over the schedule.
        margin: see :class:`ProxyGamingMonitor`.
    """
    if len(proxy_steps) != len(trusted_steps) or len(proxy_steps) == 0:
        raise InputError("proxy_steps and trusted_steps must be non-empty and of one length (one entry per step)")
    mon = ProxyGamingMonitor(alpha=alpha, steps=len(proxy_steps), margin=margin).fit(proxy_ref, trusted_ref)
    for p, t in zip(proxy_steps, trusted_steps, strict=True):
        mon.update(p, t)
    return MonitorResult(mon.history_, mon.alarm_step_)
