"""Confidence intervals: exact for proportions, seeded and vectorised bootstrap for the rest."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core._errors import InputError
from mlsafety.core._random import generator as make_generator


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% (or other) confidence interval and the sample size behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.value, self.ci_low, self.ci_high, self.n))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        raise InputError("a proportion needs at least one trial")
    if not 0 <= k <= n:
        raise InputError(f"successes k={k} must lie in [0, n={n}]")
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        raise InputError("a proportion needs at least one trial")
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: torch.Tensor | int, n: int | None = None, confidence: float = 0.95) -> Estimate:
    """A proportion with its exact (Clopper-Pearson) interval.

    Args:
        successes: a boolean tensor (one entry per trial), or a count with ``n`` given.
        n: number of trials when ``successes`` is a count.
    """
    if isinstance(successes, torch.Tensor):
        n = int(successes.numel())
        k = int(successes.sum())
    else:
        if n is None:
            raise InputError("give n with a count of successes")
        k = int(successes)
    lo, hi = clopper_pearson(k, n, confidence)
    return Estimate(k / n, lo, hi, n)


def accuracy(logits_or_pred: torch.Tensor, labels: torch.Tensor) -> Estimate:
    """Top-1 accuracy with its exact interval, from logits ``(N, K)`` or predictions ``(N,)``."""
    pred = logits_or_pred.argmax(dim=1) if logits_or_pred.ndim == 2 else logits_or_pred
    return proportion(pred.to(labels.device) == labels)


def bootstrap_two_sample(
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a: torch.Tensor,
    b: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 250,
) -> Estimate:
    """Percentile bootstrap interval of ``metric(a, b)``, resampling each sample independently.

    ``metric`` must accept 2-D batches of rows (all ranking metrics here do), so the resamples are
    evaluated ``chunk`` rows at a time without a Python loop over samples.
    """
    value = float(metric(a, b))
    g = make_generator(seed, "bootstrap", a.shape[-1], b.shape[-1])
    vals = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        ia = torch.randint(0, a.shape[-1], (rows, a.shape[-1]), generator=g).to(a.device)
        ib = torch.randint(0, b.shape[-1], (rows, b.shape[-1]), generator=g).to(b.device)
        vals.append(metric(a[ia], b[ib]))
    boot = torch.cat(vals).double()
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64, device=boot.device)
    lo, hi = torch.quantile(boot, q).tolist()
    return Estimate(value, min(lo, value), max(hi, value), int(a.shape[-1] + b.shape[-1]))


def bootstrap_mean(
    values: torch.Tensor, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95, name: str = "mean"
) -> Estimate:
    """Percentile bootstrap interval of the mean of per-sample ``values``."""
    return bootstrap_statistic(lambda v: v.mean(dim=-1), values, n_boot, seed, confidence, name)


def bootstrap_statistic(
    statistic: Callable[[torch.Tensor], torch.Tensor],
    values: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    name: str = "statistic",
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over the first dimension of ``values``.

    ``values`` is (N,) or (N, F) per-sample data (resampled together along N); ``statistic`` maps
    a batch of samples (B, N[, F]) to (B,).
    """
    n = int(values.shape[0])
    if n == 0:
        raise InputError("cannot bootstrap an empty sample")
    value = float(statistic(values.unsqueeze(0))[0])
    g = make_generator(seed, "bootstrap", name, n)
    idx = torch.randint(0, n, (n_boot, n), generator=g).to(values.device)
    boot = statistic(values[idx]).double()
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64, device=boot.device)
    lo, hi = torch.quantile(boot, q).tolist()
    return Estimate(value, min(lo, value), max(hi, value), n)
