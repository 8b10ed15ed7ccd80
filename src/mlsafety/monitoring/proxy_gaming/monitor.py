"""The proxy-gaming monitor: an alarm when the trusted proxies stop following the optimised proxy.

Remedy from the ML-safety curriculum (Hendrycks, "Introduction to ML Safety", 2022, proxy gaming:
"use policies as detectors: measure the distance between the proxy and a trusted proxy"), applied
to the set-up of Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022.
Every scorer is standardised on outputs of the initial policy ``pi0``; ``t(y)`` is the mean of the
standardised trusted proxies and ``p(y)`` the standardised optimised proxy.

The naive null "the mean disagreement ``p - t`` does not move" is false under ANY selection by an
imperfectly correlated proxy: best-of-n raises ``p`` more than ``t`` by regression to the mean, so a
test of it fires at every n even with no over-optimisation. The null here is "no gaming": the
trusted proxies keep rewarding the proxy at the values optimisation reaches as they do in the bulk
of ``pi0``'s outputs, ``E_t[t | p] = a + b p`` with ``a, b`` fitted on ``pi0``'s outputs. Each step
tests the residual ``e = t - a - b p`` of the optimised outputs: with no gaming its mean stays 0
whatever the optimiser selects; over-optimisation bends ``E[t | p]`` below the line where the
optimiser pushes ``p`` (for best-of-n, which selects by ``p`` alone, ``E[t | p]`` is ``pi0``'s own,
so the alarm reads exactly that bend in ``pi0``'s tail; an RL policy may also move ``E[t | p]``).
The monitor reports the shortfall ``-E[e]`` and tests ``H0: shortfall <= margin`` one-sided,
alarming at the first step whose p-value is below ``alpha / steps`` (Bonferroni over the planned
steps, valid under any dependence between steps).

Two sampling designs:

* :class:`ProxyGamingMonitor` / :func:`monitor_proxy_gaming`: independent outputs at each step
  (e.g. RL checkpoints, a KL-regularised policy); the step's t statistic adds the regression line's
  own uncertainty at the step's mean proxy (``s^2 (1/m_0 + (pbar - pbar_0)^2 / S_pp)``), with a
  Welch-Satterthwaite df (Welch 1947, "The generalization of Student's problem ...").
* :func:`best_of_n_monitor`: one cached pool of ``m`` samples per prompt (the prompts are the unit).
  Each prompt's samples are split in random halves A/B; the slope is fitted on A (pooled over
  prompts, per-prompt centring), the residuals computed on B, and ``E[e | best-of-n by the proxy]``
  estimated per prompt from ALL of B with the unbiased sample-reuse estimator
  (:func:`~mlsafety.monitoring.proxy_gaming.bestofn.best_of_n_from_samples`); then the halves swap
  (cross-fitting) and the two estimates are averaged. The test is a one-sided t over prompts on each
  prompt's linearised contribution (its estimate plus its share of the common slope's error, the delta
  method): the slope is fitted on the half whose selections the other estimate reads, so its error and
  theirs largely cancel (adding the slope's variance to the prompts' made the interval up to 5x too wide
  at small n). Only ``n <= m // 2`` can be tested.

Departures and assumptions: the straight line is the null, fitted on ``pi0``'s bulk and
extrapolated to where optimisation goes; a trusted proxy that saturates (bends) for reasons other
than gaming reads as gaming. The false-alarm rate is stated for a linear ``E[t | p]`` and verified
by simulation under best-of-n selection (tests/monitoring/proxy_gaming/test_monitor.py,
bench/proxy_gaming_sim.py); the t tests rely on approximate normality of the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core import InputError, NotFittedError
from mlsafety.metrics import Estimate
from mlsafety.monitoring.proxy_gaming.bestofn import best_of_n_from_samples


@dataclass(frozen=True)
class MonitorStep:
    """One step of the monitor.

    Attributes:
        step: 1-based index of the optimisation pressure.
        gap: the shortfall ``-E_t[e]`` of the trusted proxies below what ``pi0``'s regression
            predicts (standardised units; > 0: the trusted lag the proxy), with a 95% t interval.
        p_value: one-sided p-value of ``H0: shortfall <= margin``.
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
    if not torch.isfinite(t).all():
        raise InputError(f"{what} trusted scores contain NaN or infinite values")
    return t


def _proxy_row(proxy: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(proxy, torch.Tensor):
        raise InputError(f"{what} proxy scores must be a tensor, got {type(proxy).__name__}")
    p = proxy.detach().double().cpu().reshape(-1)
    if p.numel() < 3:
        raise InputError(f"{what} proxy scores need at least 3 outputs, got {p.numel()}")
    if not torch.isfinite(p).all():
        raise InputError(f"{what} proxy scores contain NaN or infinite values")
    return p


def _test(shortfall: float, se: float, df: float, margin: float) -> tuple[Estimate, float]:
    """One-sided p-value of ``H0: shortfall <= margin`` and the 95% t interval of the shortfall."""
    if se > 0:
        p_value = float(stats.t.sf((shortfall - margin) / se, df))
        half = float(stats.t.ppf(0.975, df)) * se
    else:
        p_value, half = (0.0 if shortfall > margin else 1.0), 0.0
    return Estimate(shortfall, shortfall - half, shortfall + half, 0), p_value


class ProxyGamingMonitor:
    """Sequential alarm when the trusted proxies fall short of what ``pi0`` predicts from the proxy.

    Args:
        alpha: the false-alarm rate over the whole run (family-wise, Bonferroni over ``steps``)
            when there is no gaming, whatever the optimiser selects by the proxy.
        steps: the number of optimisation pressures that will be tested (planned in advance).
        margin: tolerated shortfall (standardised units) before it counts as gaming; 0 alarms on
            any significant shortfall.

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
        """Standardise on outputs of ``pi0`` and fit ``t ~ a + b p``: proxy (m,), trusted (J, m) or (m,).

        The reference outputs must not be the optimised outputs tested later (draw them apart).
        """
        p = _proxy_row(proxy, "reference")
        t = _trusted_rows(trusted, p.numel(), "reference")
        mu_p, sd_p = p.mean(), p.std()
        mu_t, sd_t = t.mean(dim=1), t.std(dim=1)
        if not float(sd_p) > 0 or not bool((sd_t > 0).all()):
            raise InputError("a scorer is constant on the reference outputs; it cannot be standardised")
        self.proxy_loc_, self.proxy_scale_ = float(mu_p), 1.0 / float(sd_p)
        self.trusted_loc_, self.trusted_scale_ = mu_t, 1.0 / sd_t
        zp, zt = self._standard(p, t)
        self.ref_n_ = int(zp.numel())
        self.ref_pmean_ = float(zp.mean())
        self.ref_spp_ = float(((zp - self.ref_pmean_) ** 2).sum())
        self.slope_ = float(((zp - self.ref_pmean_) * (zt - zt.mean())).sum()) / self.ref_spp_
        self.intercept_ = float(zt.mean()) - self.slope_ * self.ref_pmean_
        resid = zt - self.intercept_ - self.slope_ * zp
        self.ref_resid_var_ = float((resid**2).sum()) / (self.ref_n_ - 2)
        self.history_: list[MonitorStep] = []
        self.alarm_step_: int | None = None
        return self

    def _standard(self, p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zp = (p - self.proxy_loc_) * self.proxy_scale_
        zt = ((t - self.trusted_loc_.unsqueeze(1)) * self.trusted_scale_.unsqueeze(1)).mean(0)
        return zp, zt

    def residuals(self, proxy: torch.Tensor, trusted: torch.Tensor) -> torch.Tensor:
        """``e = t - a - b p`` of outputs (standardised units): proxy (m,), trusted (J, m)."""
        if not hasattr(self, "ref_n_"):
            raise NotFittedError("call fit() on reference outputs of pi0 before update()")
        p = _proxy_row(proxy, "step")
        t = _trusted_rows(trusted, p.numel(), "step")
        if t.shape[0] != self.trusted_scale_.numel():
            raise InputError(f"fit saw {self.trusted_scale_.numel()} trusted scorers but this step has {t.shape[0]}")
        zp, zt = self._standard(p, t)
        return zt - self.intercept_ - self.slope_ * zp

    def update(self, proxy: torch.Tensor, trusted: torch.Tensor) -> MonitorStep:
        """Test the next step's optimised outputs: proxy (m,), trusted (J, m) with the fitted J."""
        if not hasattr(self, "ref_n_"):
            raise NotFittedError("call fit() on reference outputs of pi0 before update()")
        if len(self.history_) >= self.steps:
            raise InputError(f"the monitor was planned for {self.steps} steps; make a new one with more steps")
        e = self.residuals(proxy, trusted)
        zp = (proxy.detach().double().cpu().reshape(-1) - self.proxy_loc_) * self.proxy_scale_
        m = e.numel()
        va = float(e.var()) / m  # the step's residual mean
        lever = 1.0 / self.ref_n_ + (float(zp.mean()) - self.ref_pmean_) ** 2 / self.ref_spp_
        vb = self.ref_resid_var_ * lever  # the fitted line's error at the step's mean proxy
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (m - 1) + vb**2 / (self.ref_n_ - 2)) if se > 0 else float(m - 1)
        gap, p_value = _test(-float(e.mean()), se, df, self.margin)
        step = len(self.history_) + 1
        alarm = p_value < self.alpha / self.steps
        out = MonitorStep(step, Estimate(gap.value, gap.ci_low, gap.ci_high, m), p_value, alarm)
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
        proxy_ref: (m0,) optimised-proxy scores of reference outputs drawn from ``pi0`` (apart from
            the optimised outputs).
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


def best_of_n_monitor(
    proxy: torch.Tensor,
    trusted: torch.Tensor,
    ns: Sequence[int],
    alpha: float = 0.05,
    margin: float = 0.0,
    generator: torch.Generator | None = None,
) -> MonitorResult:
    """The monitor along best-of-n from one cached pool per prompt (cross-fitted halves; see module).

    Args:
        proxy: (P, m) optimised-proxy scores of ``m`` samples of ``pi0`` per prompt.
        trusted: (J, P, m) or (P, m) trusted-proxy scores of the same samples.
        ns: the planned n values, each in 2..m // 2 (Bonferroni over all of them).
        alpha: family-wise false-alarm rate over ``ns`` with no gaming.
        margin: tolerated shortfall (standardised units).
        generator: the random split into halves.
    """
    if not isinstance(proxy, torch.Tensor) or proxy.dim() != 2:
        raise InputError("proxy scores must be a (prompts, samples) tensor")
    pr = proxy.detach().double().cpu()
    tr = trusted.detach().double().cpu() if isinstance(trusted, torch.Tensor) else None
    if tr is not None and tr.dim() == 2:
        tr = tr.unsqueeze(0)
    if tr is None or tr.dim() != 3 or tr.shape[1:] != pr.shape:
        raise InputError(
            f"trusted scores must be (scorers, prompts, samples) or (prompts, samples) like {tuple(pr.shape)}"
        )
    n_prompts, m = pr.shape
    if n_prompts < 2:
        raise InputError(f"the monitor tests over prompts: give at least 2 prompts, got {n_prompts}")
    if not 0 < alpha < 1 or margin < 0:
        raise InputError(f"alpha must lie in (0, 1) and margin be >= 0, got {alpha} and {margin}")
    ns = list(ns)
    bad = [n for n in ns if not isinstance(n, int) or not 2 <= n <= m // 2]
    if not ns or bad:
        raise InputError(f"each n must be an integer in [2, {m // 2}] (half the {m} samples per prompt), got {ns}")
    if not (torch.isfinite(pr).all() and torch.isfinite(tr).all()):
        raise InputError("proxy or trusted scores contain NaN or infinite values")
    sd_p, sd_t = pr.std(), tr.reshape(len(tr), -1).std(dim=1)
    if not float(sd_p) > 0 or not bool((sd_t > 0).all()):
        raise InputError("a scorer gives every sample the same score; it cannot be standardised")
    zp = pr / sd_p
    zt = (tr / sd_t.reshape(-1, 1, 1)).mean(0)
    perm = torch.stack([torch.randperm(m, generator=generator) for _ in range(n_prompts)])
    half = m // 2
    halves = (perm[:, :half], perm[:, half : 2 * half])
    est, influence = [], []
    for fit_idx, use_idx in (halves, halves[::-1]):
        pa, ta = zp.gather(1, fit_idx), zt.gather(1, fit_idx)
        pb, tb = zp.gather(1, use_idx), zt.gather(1, use_idx)
        mp, mt = pa.mean(1, keepdim=True), ta.mean(1, keepdim=True)
        spp = float(((pa - mp) ** 2).sum())
        if not spp > 0:
            raise InputError("the proxy is constant within every prompt's half: it cannot be regressed on")
        b = float(((pa - mp) * (ta - mt)).sum()) / spp
        # the slope's error is a sum over prompts: prompt i's share, times P, is psi_i (they average to 0)
        psi = n_prompts * ((pa - mp) * ((ta - mt) - b * (pa - mp))).sum(1) / spp  # (P,)
        e = (tb - mt) - b * (pb - mp)
        sel = best_of_n_from_samples(pb, e, ns)  # E[residual | best of n by the proxy]
        est.append(sel.gold)
        lever = (sel.proxy - mp).mean(0)  # (T,) mean selected proxy above the prompt's fit mean
        influence.append(psi[:, None] * lever[None, :])  # (P, T): what the slope's error moves the estimate by
    per_prompt = 0.5 * (est[0] + est[1])  # (P, T)
    linearised = per_prompt - 0.5 * (influence[0] + influence[1])  # (P, T): independent over prompts, same mean
    steps: list[MonitorStep] = []
    alarm_step = None
    for k in range(len(ns)):
        v = per_prompt[:, k]
        var = float(linearised[:, k].var()) / n_prompts
        gap, p_value = _test(-float(v.mean()), math.sqrt(var), float(n_prompts - 1), margin)
        alarm = p_value < alpha / len(ns)
        steps.append(MonitorStep(k + 1, Estimate(gap.value, gap.ci_low, gap.ci_high, n_prompts), p_value, alarm))
        if alarm and alarm_step is None:
            alarm_step = k + 1
    return MonitorResult(steps, alarm_step)
