"""Least-squares fits of the over-optimisation scaling laws, with bootstrap intervals.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022 (eqs. 1 and 3): with
``d = sqrt(KL(pi || pi0))``, the gold reward (relative to the initial policy's) follows

* best-of-n: ``R_bon(d) = d (alpha - beta d)``, peak at ``d* = alpha / (2 beta)``;
* RL: ``R_rl(d) = d (alpha - beta log d)``, peak at ``d* = exp(alpha / beta - 1)``.

Both are linear in (alpha, beta), so the fit is ordinary least squares on the design
``[d, -d^2]`` or ``[d, -d log d]`` (the paper fits the same forms; it does not say how). Intervals
are percentile bootstraps over seeds when the curves are given as rows (S, T) (a resample of seeds
is refit on its pooled points); a single curve (S = 1) gets NaN intervals: its points are not
independent draws (they are one deterministic curve), so resampling them would measure nothing.
:func:`size_trend` regresses alpha and beta on log N per bootstrap replicate (a nested bootstrap:
seeds resampled within each N). Departures: the paper reports no intervals,
and does not fit a free intercept (neither do we: subtract the initial policy's gold first, which
:func:`fit_scaling_law` does when ``relative=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, generator
from mlsafety.metrics import Estimate, percentile_interval


def _design_bon(d: torch.Tensor) -> torch.Tensor:
    return torch.stack([d, -d * d], dim=-1)


def _design_rl(d: torch.Tensor) -> torch.Tensor:
    dlog = torch.where(d > 0, d * torch.log(d.clamp_min(1e-300)), torch.zeros_like(d))
    return torch.stack([d, -dlog], dim=-1)


RL_LOG_PEAK_MAX = 50.0
"""Largest ``alpha / beta - 1`` (the log of the RL form's d*) reported as a finite peak; beyond it
(d* > e^50, far past any KL an optimiser reaches) the fitted curve has no peak in reach: ``inf``."""


def _peak_bon(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``alpha / (2 beta)``; ``inf`` when beta <= 0 (no fall), 0 when alpha <= 0 < beta (gold falls from d = 0)."""
    d = (alpha / (2 * beta)).clamp_min(0.0)
    return torch.where(beta > 0, d, torch.full_like(alpha, math.inf))


def _peak_rl(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``exp(alpha / beta - 1)`` (positive for any alpha); ``inf`` when beta <= 0 or the log exceeds
    :data:`RL_LOG_PEAK_MAX`."""
    log_d = alpha / beta - 1
    ok = (beta > 0) & (log_d <= RL_LOG_PEAK_MAX)
    return torch.where(ok, torch.exp(log_d.clamp_max(RL_LOG_PEAK_MAX)), torch.full_like(alpha, math.inf))


FORMS: dict[
    str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
] = {
    "bon": (_design_bon, _peak_bon),
    "rl": (_design_rl, _peak_rl),
}
"""The functional forms by name: (design matrix of d, predicted peak from alpha and beta)."""


def predict(form: str, d: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``R(d)`` of the named form (``"bon"`` or ``"rl"``) at ``d`` for the given alpha, beta."""
    design, _ = _form(form)
    return design(torch.as_tensor(d, dtype=torch.float64)) @ torch.tensor([alpha, beta], dtype=torch.float64)


def _form(
    form: str,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    entry = FORMS.get(form)
    if entry is None:
        raise InputError(f"unknown functional form {form!r}; use one of {sorted(FORMS)}")
    return entry


@dataclass(frozen=True)
class ScalingFit:
    """One fitted scaling law.

    Attributes:
        form: ``"bon"`` or ``"rl"``.
        alpha: alpha with its bootstrap interval over seeds (n = seeds; NaN ends for one curve).
        beta: beta likewise.
        r2: coefficient of determination of the fit to the mean curve (1 - SSE / SST).
        peak: predicted peak d* with its bootstrap interval (``inf`` where beta <= 0; for best-of-n 0
            where alpha <= 0 < beta; for RL ``inf`` past ``exp(RL_LOG_PEAK_MAX)``).
        d: (T,) the d values fitted.
        reward: (T,) the (mean, relative) gold reward fitted.
        boot: (B, 2) the bootstrap replicates of (alpha, beta) (resampled seeds, degenerate resamples
            dropped), or None for a single curve; :func:`size_trend` regresses them on log N.
    """

    form: str
    alpha: Estimate
    beta: Estimate
    r2: float
    peak: Estimate
    d: torch.Tensor
    reward: torch.Tensor
    boot: torch.Tensor | None = None

    def predict(self, d: torch.Tensor) -> torch.Tensor:
        """The fitted curve at ``d``."""
        return predict(self.form, d, self.alpha.value, self.beta.value)


def _lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Batched least squares: x (B, P, 2), y (B, P) -> (B, 2) via the 2x2 normal equations."""
    xtx = x.transpose(-1, -2) @ x
    xty = (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.solve(xtx, xty)


def _as_curves(
    d: torch.Tensor | Sequence[float], reward: torch.Tensor | Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.as_tensor(reward, dtype=torch.float64)
    dd = torch.as_tensor(d, dtype=torch.float64)
    if r.ndim == 1:
        r = r.unsqueeze(0)
    if r.ndim != 2 or r.numel() == 0:
        raise InputError("reward must be (T,) or (seeds, T) with at least one point")
    if dd.ndim == 1 and dd.shape[0] == r.shape[1]:
        dd = dd.unsqueeze(0).expand_as(r)
    if dd.shape != r.shape:
        raise InputError(f"d and reward must have matching shapes, got {tuple(dd.shape)} and {tuple(r.shape)}")
    if (dd < 0).any() or not (torch.isfinite(dd).all() and torch.isfinite(r).all()):
        raise InputError("d must be finite and >= 0 and reward finite")
    if r.shape[1] < 3:
        raise InputError(f"a fit needs at least 3 points per curve, got {r.shape[1]}")
    return dd, r


def fit_scaling_law(
    d: torch.Tensor | Sequence[float],
    reward: torch.Tensor | Sequence[float],
    form: str = "bon",
    relative: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ScalingFit:
    """Fit ``R(d)`` of the named form by least squares, with percentile-bootstrap intervals.

    Args:
        d: (T,) or (S, T) sqrt-KL values (the first point is the initial policy when ``relative``).
        reward: (T,) one curve or (S, T) one curve per seed: the GOLD reward (proxy curves are
            monotone and the forms describe the gold's rise and fall).
        form: ``"bon"`` (``d (alpha - beta d)``) or ``"rl"`` (``d (alpha - beta log d)``).
        relative: subtract each curve's reward at its smallest d (the initial policy's gold) first,
            as the paper does; the curve must then include d = 0 (n = 1 or lambda -> inf).
        n_boot: bootstrap resamples of the seeds (unused for one curve: its intervals are NaN).
        seed: seeds the bootstrap generator.
        confidence: interval level.
    """
    design, peak_fn = _form(form)
    dd, r = _as_curves(d, reward)
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    if relative:
        first = dd.argmin(dim=1, keepdim=True)
        r = r - r.gather(1, first)
    s, t = r.shape
    x = design(dd)  # (S, T, 2)
    coef = _lstsq(x.reshape(1, s * t, 2), r.reshape(1, s * t))[0]
    mean_r = r.mean(0)
    fitted = (x.mean(0) @ coef) if s == 1 else (design(dd.mean(0)) @ coef)
    sst = float(((mean_r - mean_r.mean()) ** 2).sum())
    r2 = 1.0 - float(((mean_r - fitted) ** 2).sum()) / sst if sst > 0 else float("nan")
    peak_value = float(peak_fn(coef[0:1], coef[1:2])[0])
    if s == 1:
        nan = math.nan
        return ScalingFit(form, Estimate(float(coef[0]), nan, nan, 1), Estimate(float(coef[1]), nan, nan, 1), r2,
                          Estimate(peak_value, nan, nan, 1), dd.mean(0), mean_r)  # fmt: skip
    g = generator(seed, "fit_scaling_law", form, s, t)
    idx = torch.randint(0, s, (n_boot, s), generator=g)
    xb = x[idx].reshape(n_boot, s * t, 2)
    yb = r[idx].reshape(n_boot, s * t)
    ok = torch.linalg.det(xb.transpose(-1, -2) @ xb).abs() > 1e-12
    boot = _lstsq(xb[ok], yb[ok])
    alpha_e = percentile_interval(boot[:, 0], float(coef[0]), s, confidence)
    beta_e = percentile_interval(boot[:, 1], float(coef[1]), s, confidence)
    peak_e = _peak_interval(peak_fn(boot[:, 0], boot[:, 1]), peak_value, s, confidence)
    return ScalingFit(form, alpha_e, beta_e, r2, peak_e, dd.mean(0), mean_r, boot)


def _peak_interval(boot: torch.Tensor, value: float, n: int, confidence: float) -> Estimate:
    """Percentile interval of peak replicates, some of which may be ``inf`` (beta <= 0: no peak).

    Quantiles are taken at order statistics (no interpolation), so an infinite replicate never
    meets ``inf - inf``; an infinite upper end says the data do not rule out a curve without a peak.
    """
    if bool(torch.isfinite(boot).all()):
        return percentile_interval(boot, value, n, confidence)
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    lo = float(torch.quantile(boot.double(), q[0], interpolation="lower"))
    hi = float(torch.quantile(boot.double(), q[1], interpolation="higher"))
    return Estimate(value, min(lo, value), max(hi, value), n)


def _refine_peak(d: torch.Tensor, r: torch.Tensor) -> float:
    """The d of the curve's maximum, refined by a parabola through the best point and its neighbours."""
    k = int(r.argmax())
    if k == 0 or k == r.numel() - 1:
        return float(d[k])
    x = d[k - 1 : k + 2]
    y = r[k - 1 : k + 2]
    a = torch.stack([x * x, x, torch.ones_like(x)], dim=1)
    try:
        c = torch.linalg.solve(a, y)
    except RuntimeError:
        return float(d[k])
    if float(c[0]) >= 0:
        return float(d[k])
    return float((-c[1] / (2 * c[0])).clamp(x[0], x[2]))


@dataclass(frozen=True)
class ObservedPeak:
    """Where the gold reward curve peaks, over seeds.

    A seed whose maximum is the LAST grid point has not peaked yet (its peak lies beyond the grid:
    right-censored); it is flagged in ``interior`` and left out of ``d``, ``spread`` and ``reward``,
    so compare a predicted peak with ``d`` only together with ``censored``.

    Attributes:
        d: mean peak d over the interior seeds with its bootstrap interval over them (NaN ends with
            fewer than two; NaN value with none).
        per_seed: (S,) the peak d of each seed's curve (parabolic refinement at the grid maximum).
        interior: (S,) bool, False where the seed's maximum is the grid's end (censored).
        spread: (2.5%, 97.5%) quantiles of the interior ``per_seed`` (where single runs peak).
        reward: the gold reward at the peak (mean over the interior seeds, with interval).
    """

    d: Estimate
    per_seed: torch.Tensor
    interior: torch.Tensor
    spread: tuple[float, float]
    reward: Estimate

    @property
    def censored(self) -> int:
        """Seeds whose gold still rises at the grid's end (no observed peak)."""
        return int((~self.interior).sum())


def observed_peak(
    d: torch.Tensor | Sequence[float],
    reward: torch.Tensor | Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ObservedPeak:
    """The observed gold peak's d (per seed, refined by a parabola through the grid maximum) with
    a bootstrap interval of its mean over the seeds that peak inside the grid.

    Args:
        d: (T,) or (S, T) sqrt-KL values, increasing along T.
        reward: (S, T) gold reward per seed (or (T,): one curve, a zero-width interval).
    """
    dd, r = _as_curves(d, reward)
    peaks = torch.tensor([_refine_peak(dd[i], r[i]) for i in range(r.shape[0])], dtype=torch.float64)
    interior = r.argmax(dim=1) < r.shape[1] - 1
    inner, tops = peaks[interior], r.max(dim=1).values[interior]
    s = inner.numel()
    nan = math.nan
    if s < 2:  # one interior seed has no spread to bootstrap: its value, no interval
        v, top = (float(inner[0]), float(tops[0])) if s else (nan, nan)
        return ObservedPeak(Estimate(v, nan, nan, s), peaks, interior, (v, v), Estimate(top, nan, nan, s))
    g = generator(seed, "observed_peak", s)
    idx = torch.randint(0, s, (n_boot, s), generator=g)
    d_e = percentile_interval(inner[idx].mean(1), float(inner.mean()), s, confidence)
    r_e = percentile_interval(tops[idx].mean(1), float(tops.mean()), s, confidence)
    q = torch.quantile(inner, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return ObservedPeak(d_e, peaks, interior, (float(q[0]), float(q[1])), r_e)


@dataclass(frozen=True)
class SizeTrend:
    """How alpha and beta move with proxy data size N: ``coef = a + b log N`` fitted by least squares.

    Attributes:
        sizes: (M,) the N values.
        alpha: (M,) alpha at each N; ``beta`` likewise.
        alpha_slope: d alpha / d log N with a nested-bootstrap interval (the slope refitted on each
            bootstrap replicate of the per-N fits: seeds resampled within each N; NaN ends when a
            fit has no replicates); ``beta_slope`` likewise.
    """

    sizes: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    alpha_slope: Estimate
    beta_slope: Estimate


def size_trend(sizes: Sequence[float], fits: Sequence[ScalingFit], *, confidence: float = 0.95) -> SizeTrend:
    """Slopes of alpha and beta against log N across fits made at proxy data sizes ``sizes``.

    The interval is a nested bootstrap: replicate ``b`` of every fit (its seeds resampled, refitted)
    gives one (alpha, beta) per N, regressed on log N; the slopes' percentile interval over ``b``
    carries each alpha's uncertainty (a bootstrap over the few sizes would ignore it). Fits with
    unequal replicate counts use the first ``min`` replicates of each (replicates are independent).
    """
    if len(sizes) != len(fits) or len(sizes) < 2:
        raise InputError("size_trend needs one fit per size and at least two sizes")
    n = torch.as_tensor(list(sizes), dtype=torch.float64)
    if (n <= 0).any():
        raise InputError("proxy data sizes must be positive")
    if len(set(n.tolist())) < 2:
        raise InputError("size_trend needs at least two distinct sizes")
    a = torch.tensor([f.alpha.value for f in fits], dtype=torch.float64)
    b = torch.tensor([f.beta.value for f in fits], dtype=torch.float64)
    x = torch.stack([torch.ones_like(n), n.log()], dim=1).unsqueeze(0)  # (1, M, 2)
    m = n.numel()
    boots = [f.boot for f in fits]
    slopes = []
    for k, y in enumerate((a, b)):
        point = float(_lstsq(x, y.unsqueeze(0))[0, 1])
        if any(bt is None or bt.shape[0] == 0 for bt in boots):
            slopes.append(Estimate(point, math.nan, math.nan, m))
            continue
        reps = min(int(bt.shape[0]) for bt in boots if bt is not None)
        yb = torch.stack([bt[:reps, k] for bt in boots if bt is not None], dim=1)  # (B, M)
        slope_b = _lstsq(x.expand(reps, m, 2), yb)[:, 1]
        slopes.append(percentile_interval(slope_b, point, m, confidence))
    return SizeTrend(n, a, b, slopes[0], slopes[1])
