"""Confidence intervals: exact for proportions, a seeded percentile bootstrap for the rest.

The bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993) is computed from
multinomial resampling weights applied to per-input terms (:func:`bootstrap_weighted`): a
resample is the vector of counts of each input, so memory is O(N + n_boot + chunk x N) and never
O(n_boot x N x K). The counts are those of explicit index resampling with the same generator, so
the intervals equal those of resampling the data itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}")


def median(values: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """The sample median along ``dim``: the middle value, or the mean of the two middle ones for an even count.

    The statistical definition (NumPy's ``median``, and the one robust z-scores such as Neural Cleanse's MAD
    test are defined with). ``torch.median`` returns the lower of the two middle values instead, which moves a
    MAD anomaly index of K = 10 classes by 20% or more.
    """
    if values.shape[dim] == 0:
        raise InputError("the median of an empty sample is undefined")
    ordered = values.sort(dim=dim).values
    n = ordered.shape[dim]
    mid = (ordered.narrow(dim, (n - 1) // 2, 1) + ordered.narrow(dim, n // 2, 1)) / 2
    return mid if keepdim else mid.squeeze(dim)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for ``k`` successes in ``n`` trials.

    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934. Each end is a beta quantile at ``(1 - confidence) / 2``; the lower
    end is :func:`clopper_pearson_lower` at that tail probability.
    """
    if n <= 0:
        raise InputError("a proportion needs at least one trial")
    if not 0 <= k <= n:
        raise InputError(f"successes k={k} must lie in [0, n={n}]")
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(clopper_pearson_lower(k, n, alpha / 2))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def clopper_pearson_lower(k: torch.Tensor | int, n: torch.Tensor | int, alpha: float = 0.05) -> torch.Tensor:
    """One-sided exact (Clopper-Pearson) lower bounds: ``P(p >= bound) >= 1 - alpha`` for each count.

    The ``alpha`` quantile of Beta(k, n - k + 1), 0 where ``k = 0``: the lower end of the two-sided
    interval at confidence ``1 - 2 alpha``. Randomized smoothing's ``CERTIFY`` bounds the top class's
    probability with it (Cohen et al. 2019 write it as ``proportion_confint(k, n, alpha=2 * alpha,
    method="beta")[0]``).

    Args:
        k: successes, an int or an integer tensor of any shape.
        n: trials, an int or a tensor broadcastable with ``k``.
        alpha: the bound's error probability, in (0, 1); ``alpha``, not ``1 - alpha``, is passed on
            to the quantile unchanged.

    Returns:
        float64 bounds of ``k``'s shape, on ``k``'s device (the CPU for an int).
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    kt, nt = torch.as_tensor(k), torch.as_tensor(n)
    k_np = kt.detach().cpu().double().numpy()
    n_np = nt.detach().cpu().double().numpy()
    if (n_np <= 0).any():
        raise InputError("a proportion needs at least one trial")
    if ((k_np < 0) | (k_np > n_np)).any():
        raise InputError("successes k must lie in [0, n]")
    out = torch.as_tensor(stats.beta.ppf(alpha, k_np, n_np - k_np + 1), dtype=torch.float64)
    out[torch.as_tensor(k_np == 0)] = 0.0  # Beta(0, .) is undefined: no success bounds nothing
    return out.to(kt.device)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials."""
    if n <= 0:
        raise InputError("a proportion needs at least one trial")
    if not 0 <= k <= n:
        raise InputError(f"successes k={k} must lie in [0, n={n}]")
    _check_confidence(confidence)
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


CHUNK_ELEMENTS = 1 << 21
"""Draws are made and evaluated in chunks of about this many (draw, input) entries (16 MB of float64),
so a bootstrap's memory is O(N + n_boot + chunk x N), whatever ``n_boot`` is."""


def _rows_per_chunk(width: int, chunk_elements: int | None) -> int:
    return max(1, (chunk_elements or CHUNK_ELEMENTS) // max(1, width))


def bootstrap_counts(
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    name: str = "statistic",
    generator: torch.Generator | None = None,
    chunk_elements: int | None = None,
) -> Iterator[torch.Tensor]:
    """Multinomial bootstrap weights: how often each of ``n`` inputs appears in each resample.

    Yields float64 tensors (B, n) of counts, chunk by chunk (B at most ``chunk_elements / n``),
    ``n_boot`` rows in all; every row sums to ``n``. Row ``b`` counts the indices
    ``torch.randint(0, n, (n_boot, n), generator=g)[b]``, drawn chunk by chunk from the same stream
    (PyTorch's CPU ``randint`` is sequential), so a statistic weighted by these counts equals the
    statistic of the explicitly resampled data, and the draws do not depend on the chunk size.

    Args:
        n: number of inputs.
        n_boot: number of resamples.
        seed: seed of the draws, used with ``name`` when no ``generator`` is given
            (``mlsafety.core.generator(seed, "bootstrap", name, n)``).
        name: the statistic's name, so two statistics of one run draw different resamples.
        generator: the CPU generator to draw from instead of the seed-derived one.
        chunk_elements: entries per chunk (default :data:`CHUNK_ELEMENTS`).
    """
    if n <= 0:
        raise InputError("cannot bootstrap an empty sample")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    g = generator if generator is not None else make_generator(seed, "bootstrap", name, n)
    rows = _rows_per_chunk(n, chunk_elements)
    sub = max(1, min(rows, (1 << 18) // n))  # indices are drawn a few rows at a time, then counted
    ones = torch.ones(sub, n, dtype=torch.float64)
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        counts = torch.zeros(b, n, dtype=torch.float64)
        for r in range(0, b, sub):
            idx = torch.randint(0, n, (min(sub, b - r), n), generator=g)
            counts[r : r + idx.shape[0]].scatter_add_(1, idx, ones[: idx.shape[0]])
        yield counts


def percentile_interval(boot: torch.Tensor, value: float, n: int, confidence: float = 0.95) -> Estimate:
    """``value`` with the percentile interval of its bootstrap replicates ``boot`` (B,).

    The interval is widened to contain ``value`` when the replicates all fall on one side of it.
    """
    boot = boot.double().cpu()
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(boot, q).tolist()
    return Estimate(value, min(lo, value), max(hi, value), n)


def bootstrap_weighted(
    statistic: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    name: str = "statistic",
    value: float | None = None,
    generator: torch.Generator | None = None,
    chunk_elements: int | None = None,
) -> Estimate:
    """Percentile bootstrap of a statistic written as a function of per-input weights.

    ``statistic`` maps weights (B, n) (float64 counts from :func:`bootstrap_counts`: how often each
    input is drawn into each resample) to (B,) values, e.g. ``lambda w: w @ x / w.sum(1)`` for a
    mean. Only sufficient statistics are formed, never a (n_boot, n, ...) resampled array, so the
    memory is O(n + n_boot + chunk x n). With the same seed and name it gives the interval
    :func:`bootstrap_statistic` gives for the equivalent statistic of resampled data.

    Args:
        statistic: the statistic of weighted data, batched over rows of weights.
        n: number of inputs.
        n_boot: number of resamples.
        seed: seed of the draws (see :func:`bootstrap_counts`).
        confidence: interval level.
        name: the statistic's name (part of the derived generator).
        value: the point estimate; by default ``statistic`` at unit weights.
        generator: draw from this CPU generator instead of the seed-derived one.
        chunk_elements: memory bound per chunk (see :data:`CHUNK_ELEMENTS`).
    """
    if n <= 0:
        raise InputError("cannot bootstrap an empty sample")
    if value is None:
        value = float(statistic(torch.ones(1, n, dtype=torch.float64))[0])
    boot = torch.cat(
        [statistic(w).double().cpu() for w in bootstrap_counts(n, n_boot, seed, name, generator, chunk_elements)]
    )
    return percentile_interval(boot, value, n, confidence)


def bootstrap_mean(
    values: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    name: str = "mean",
    generator: torch.Generator | None = None,
) -> Estimate:
    """Percentile bootstrap interval of the mean of per-sample ``values`` (N,).

    Each resample's mean is a weighted mean of ``values`` (multinomial counts as weights), so
    memory is O(N + chunk x N) whatever ``n_boot`` is.
    """
    v = values.detach().reshape(-1)
    n = int(v.numel())
    if n == 0:
        raise InputError("cannot bootstrap an empty sample")
    v64 = v.double().cpu()
    return bootstrap_weighted(
        lambda w: w @ v64 / n, n, n_boot, seed, confidence, name, value=float(v.mean()), generator=generator
    )


def bootstrap_statistic(
    statistic: Callable[[torch.Tensor], torch.Tensor],
    values: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    name: str = "statistic",
    generator: torch.Generator | None = None,
    chunk_elements: int | None = None,
) -> Estimate:
    """Percentile bootstrap of ``statistic`` over the first dimension of ``values``.

    ``values`` is (N,) or (N, F) per-sample data (resampled together along N); ``statistic`` maps
    a batch of samples (B, N[, F]) to (B,). Resamples are built and evaluated a chunk at a time
    (B x N x F at most about ``chunk_elements``), so memory does not grow with ``n_boot``. For
    statistics that are functions of per-input sums (means, binned errors, risk-coverage areas)
    prefer :func:`bootstrap_weighted`, which never forms resampled copies of the data; both draw
    the same resamples for the same seed and name.
    """
    n = int(values.shape[0])
    if n == 0:
        raise InputError("cannot bootstrap an empty sample")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    value = float(statistic(values.unsqueeze(0))[0])
    g = generator if generator is not None else make_generator(seed, "bootstrap", name, n)
    rows = _rows_per_chunk(n * max(1, values[0].numel()), chunk_elements)
    boots = []
    for start in range(0, n_boot, rows):
        idx = torch.randint(0, n, (min(rows, n_boot - start), n), generator=g).to(values.device)
        boots.append(statistic(values[idx]).double().cpu())
    return percentile_interval(torch.cat(boots), value, n, confidence)
