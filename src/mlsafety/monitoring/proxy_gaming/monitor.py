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
  That standard error counts every output as independent. When outputs can REPEAT (a finite output
  space, or any optimiser that concentrates: best-of-256 over 4,096 outputs puts thousands of draws
  on a few dozen distinct outputs, whose trusted-proxy errors are drawn once per output, not once
  per draw), pass the outputs' identities (``ids`` to ``fit`` and ``update``): the step's shortfall
  then gets a cluster-robust variance by distinct output (Liang & Zeger 1986, "Longitudinal data
  analysis using generalized linear models"), summing each output's influence over the step's draws
  AND the reference draws (an output in both moves the line and the step together), with the
  weighted-mean small-sample factor ``1 / (1 - sum_g w_g^2)`` on the step's part and a
  Satterthwaite df ``(sum_g A_g^2)^2 / sum_g A_g^4`` over the outputs' coefficients ``A_g``.
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


def _ids_row(ids: torch.Tensor | None, m: int, what: str) -> torch.Tensor | None:
    if ids is None:
        return None
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise InputError(f"{what} ids must be an integer tensor of output identities")
    out = ids.detach().cpu().reshape(-1).long()
    if out.numel() != m:
        raise InputError(f"{what} ids must give one identity per output: {m} outputs, got {out.numel()} ids")
    return out


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

    def fit(self, proxy: torch.Tensor, trusted: torch.Tensor, ids: torch.Tensor | None = None) -> ProxyGamingMonitor:
        """Standardise on outputs of ``pi0`` and fit ``t ~ a + b p``: proxy (m,), trusted (J, m) or (m,).

        The reference outputs must be drawn apart from the optimised outputs tested later.

        Args:
            proxy: (m,) optimised-proxy scores of outputs drawn from ``pi0``.
            trusted: (J, m) or (m,) trusted-proxy scores of the same outputs.
            ids: (m,) integer identities of the outputs where the same output can be drawn more than
                once (then ``update`` needs ids too, from the same id space); None: all distinct.
        """
        p = _proxy_row(proxy, "reference")
        t = _trusted_rows(trusted, p.numel(), "reference")
        self.ref_ids_ = _ids_row(ids, p.numel(), "reference")
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
        self.ref_zp_, self.ref_resid_ = zp, resid
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

    def update(self, proxy: torch.Tensor, trusted: torch.Tensor, ids: torch.Tensor | None = None) -> MonitorStep:
        """Test the next step's optimised outputs: proxy (m,), trusted (J, m) with the fitted J.

        ``ids`` (m,): the outputs' identities, required exactly when ``fit`` was given ids (see module).
        """
        if not hasattr(self, "ref_n_"):
            raise NotFittedError("call fit() on reference outputs of pi0 before update()")
        if len(self.history_) >= self.steps:
            raise InputError(f"the monitor was planned for {self.steps} steps; make a new one with more steps")
        e = self.residuals(proxy, trusted)
        step_ids = _ids_row(ids, e.numel(), "step")
        if (step_ids is None) != (self.ref_ids_ is None):
            raise InputError("give output ids to both fit() and update() or to neither (they share one id space)")
        zp = (proxy.detach().double().cpu().reshape(-1) - self.proxy_loc_) * self.proxy_scale_
        m = e.numel()
        if step_ids is None:
            va = float(e.var()) / m  # the step's residual mean
            lever = 1.0 / self.ref_n_ + (float(zp.mean()) - self.ref_pmean_) ** 2 / self.ref_spp_
            vb = self.ref_resid_var_ * lever  # the fitted line's error at the step's mean proxy
            se = math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (m - 1) + vb**2 / (self.ref_n_ - 2)) if se > 0 else float(m - 1)
        else:
            se, df = self._clustered_se(e, float(zp.mean()), step_ids)
        gap, p_value = _test(-float(e.mean()), se, df, self.margin)
        step = len(self.history_) + 1
        alarm = p_value < self.alpha / self.steps
        out = MonitorStep(step, Estimate(gap.value, gap.ci_low, gap.ci_high, m), p_value, alarm)
        self.history_.append(out)
        if alarm and self.alarm_step_ is None:
            self.alarm_step_ = step
        return out

    def _clustered_se(self, e: torch.Tensor, pbar: float, ids: torch.Tensor) -> tuple[float, float]:
        """Cluster-robust standard error (by distinct output, over the step and the reference) and its df."""
        assert self.ref_ids_ is not None
        m, m0 = e.numel(), self.ref_n_
        uniq, inv = torch.unique(torch.cat([ids, self.ref_ids_]), return_inverse=True)
        step_g, ref_g = inv[:m], inv[m:]
        w = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
            0, step_g, torch.full((m,), 1.0 / m, dtype=torch.float64)
        )
        sum_w2 = float((w**2).sum())
        if not sum_w2 < 1.0:
            raise InputError("the step's outputs are all one output: give ids of at least 2 distinct outputs")
        k = 1.0 / math.sqrt(1.0 - sum_w2)  # unbiased variance of a weighted mean with weights w
        # the line's prediction at the step's mean proxy moves by sum_i c_i r_i over the reference draws
        c = 1.0 / m0 + (pbar - self.ref_pmean_) * (self.ref_zp_ - self.ref_pmean_) / self.ref_spp_
        k0 = math.sqrt(m0 / (m0 - 2))  # the line's residuals are short of its errors by its 2 parameters
        infl = torch.zeros(len(uniq), dtype=torch.float64)
        infl.index_add_(0, step_g, k * (e - e.mean()) / m)
        infl.index_add_(0, ref_g, -k0 * c * self.ref_resid_)
        coef = k * w - torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, ref_g, k0 * c)
        var = float((infl**2).sum())
        a2 = coef**2
        df = float(a2.sum() ** 2 / (a2**2).sum()) if float(a2.sum()) > 0 else 1.0
        return math.sqrt(var), max(df, 1.0)


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
    ref_ids: torch.Tensor | None = None,
    step_ids: Sequence[torch.Tensor] | None = None,
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
        ref_ids: (m0,) integer identities of the reference outputs where outputs can repeat (a finite
            space); then ``step_ids`` too: a cluster-robust standard error by distinct output.
        step_ids: per step, (m_t,) identities of the optimised outputs, in ``ref_ids``' id space.
    """
    if len(proxy_steps) != len(trusted_steps) or len(proxy_steps) == 0:
        raise InputError("proxy_steps and trusted_steps must be non-empty and of one length (one entry per step)")
    if (ref_ids is None) != (step_ids is None) or (step_ids is not None and len(step_ids) != len(proxy_steps)):
        raise InputError("give ref_ids and step_ids together, step_ids with one entry per step, or neither")
    mon = ProxyGamingMonitor(alpha=alpha, steps=len(proxy_steps), margin=margin).fit(proxy_ref, trusted_ref, ref_ids)
    ids_steps: Sequence[torch.Tensor | None] = step_ids if step_ids is not None else [None] * len(proxy_steps)
    for p, t, i in zip(proxy_steps, trusted_steps, ids_steps, strict=True):
        mon.update(p, t, i)
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
