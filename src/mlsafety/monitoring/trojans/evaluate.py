"""A trojan scan summarised with intervals: the scanner's score over its seeds, the share of seeds that
flag, and Neural Cleanse's per-class anomaly indices (:func:`summarize_scan`).

A scanner's score is the mean over seeds of its model-level score; its 95% interval depends on what
the score is:

* MAD anomaly indices (Neural Cleanse, spectral signatures): a robust z-score of one class against
  the median and MAD of the K classes. With K = 10 the reference itself is the main uncertainty,
  so the interval is a smoothed percentile bootstrap over the K classes (:data:`N_CLASS_BOOT`
  resamples of the classes' values with Gaussian noise of Silverman's bandwidth, each class's
  index recomputed against the resampled median and MAD, seeds averaged within each resample; see
  :func:`mad_index_bootstrap`). It does not cover the reverse-engineering's own randomness (the
  spread over seeds is reported beside it); a bootstrap over the inputs used to reverse-engineer
  would need hundreds of optimisations.
* Shares of inputs (STRIP's share of flagged probe inputs, ABS's REASR): exact Clopper-Pearson;
  with several seeds, each seed's exact interval at ``1 - 0.05 / S`` (Bonferroni), averaged.
  ABS's REASR is that of the best of its candidates, so the interval does not correct for the
  choice.
* Any other score (activation clustering): Student's t interval over the seeds (two or more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core import InputError
from mlsafety.metrics import Estimate, clopper_pearson, median, proportion
from mlsafety.monitoring.trojans.scanners import SCANNERS, ScanResult
from mlsafety.monitoring.trojans.scanners.neural_cleanse import MAD_CONSISTENCY

__all__ = [
    "MAD_SCORE",
    "NC",
    "N_CLASS_BOOT",
    "SHARE_SCORE",
    "ScanSummary",
    "class_draws",
    "mad_index_bootstrap",
    "needs_seed_spread",
    "silverman_bandwidth",
    "summarize_scan",
]

NC = "neural-cleanse"
N_CLASS_BOOT = 2000
"""Resamples of the class bootstrap of MAD anomaly indices (K values per resample: cheap)."""
SHARE_SCORE = "share-score"
"""Registry tag of scanners whose score is a share of inputs (exact intervals)."""
MAD_SCORE = "mad-score"
"""Registry tag of scanners whose score is the largest MAD anomaly index over classes (class bootstrap)."""


def needs_seed_spread(scanner: str) -> bool:
    """Whether the interval of registered ``scanner``'s score is its spread over seeds (so it needs
    two or more seeds): a scanner tagged neither :data:`SHARE_SCORE` nor :data:`MAD_SCORE`."""
    return not {SHARE_SCORE, MAD_SCORE} & SCANNERS.tags(scanner)


@dataclass(frozen=True)
class ScanSummary:
    """A scan's numbers with their intervals (:func:`summarize_scan`).

    Attributes:
        score: the mean score over seeds (higher = more suspicious) with its 95% interval.
        interval: how that interval was made, in words.
        flag_rate: share of seeds whose score passed the threshold (exact interval).
        anomaly_index: Neural Cleanse only: each class's anomaly index with its class-bootstrap
            interval; empty for other scanners.
        mask_l1: Neural Cleanse only: (S, K) the L1 norm of each seed's mask for each class.
    """

    score: Estimate
    interval: str
    flag_rate: Estimate
    anomaly_index: tuple[Estimate, ...] = ()
    mask_l1: torch.Tensor | None = None


def class_draws(k: int, g: torch.Generator, n_boot: int = N_CLASS_BOOT) -> torch.Tensor:
    """(n_boot, k) bootstrap resamples of ``k`` classes (indices drawn with replacement)."""
    return torch.randint(0, k, (n_boot, k), generator=g)


def silverman_bandwidth(values: torch.Tensor) -> torch.Tensor:
    """(S, 1) kernel bandwidth per row of ``values`` (S, K): Silverman's rule ``1.06 sigma K^(-1/5)``
    with the robust scale ``sigma = 1.4826 MAD`` (B. W. Silverman, "Density Estimation", 1986)."""
    v = values.double()
    med = median(v, dim=1, keepdim=True)
    sigma = median((v - med).abs(), dim=1, keepdim=True) * MAD_CONSISTENCY
    return 1.06 * sigma * v.shape[1] ** -0.2


def mad_index_bootstrap(
    values: torch.Tensor, sign: float, draws: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Each class's MAD anomaly index against bootstrap resamples of the classes (the reference).

    The index of class k is a robust z-score ``sign * (v_k - median(v)) / (1.4826 * MAD(v))``
    (Neural Cleanse, Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
    Neural Networks", IEEE S&P 2019). Here ``v_k`` stays fixed and the median and MAD come from a
    resample ``v*`` of the K classes, so the spread over resamples is the sampling error of the
    reference the index is measured against.

    With few classes a plain resample repeats values, and when more than half of it is one value its MAD is
    0 and every index explodes (a known failure of the bootstrap for medians). ``noise`` makes it a
    smoothed bootstrap (Silverman & Young, "The bootstrap: to smooth or not to smooth?",
    Biometrika 1987; Hall, DiCiccio & Romano, "On smoothing and the bootstrap", Ann. Stat. 1989):
    each resampled value moves by ``noise`` times :func:`silverman_bandwidth` of its row.

    An index is invariant under increasing affine maps of the values (the bandwidth scales with
    the MAD too), so with ``sign=+1`` the indices themselves can stand for the raw values (used for
    spectral signatures, whose raw strengths are not kept).

    Args:
        values: (S, K) per seed, the K classes' values (Neural Cleanse's mask norms).
        sign: -1 for an index positive below the median (Neural Cleanse), +1 above it.
        draws: (B, K) class indices of each resample (:func:`class_draws`); the same for every seed.
        noise: (B, S, K) standard normal draws, or None for the plain bootstrap.

    Returns:
        (B, S, K); with ``draws = arange(K)`` and no noise it is the scanner's own index (medians of an
        even count are the mean of the two middle values, :func:`~mlsafety.metrics.median`).
    """
    ref = values.double()[:, draws].permute(1, 0, 2)  # (B, S, K)
    if noise is not None:
        ref = ref + noise.double() * silverman_bandwidth(values)[None]
    med = median(ref, dim=2, keepdim=True)
    mad = median((ref - med).abs(), dim=2, keepdim=True) * MAD_CONSISTENCY
    return sign * (values.double()[None] - med) / mad.clamp_min(1e-12)


def _smoothed(values: torch.Tensor, sign: float, g: torch.Generator) -> torch.Tensor:
    """(B, S, K) smoothed class-bootstrap indices, the draws and then the noise taken from ``g``."""
    draws = class_draws(int(values.shape[1]), g)
    noise = torch.randn((N_CLASS_BOOT, *values.shape), generator=g, dtype=torch.float64)
    return mad_index_bootstrap(values, sign, draws, noise)


def _percentile(boot: torch.Tensor, value: float, n: int) -> Estimate:
    lo, hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Estimate(value, min(lo, value), max(hi, value), n)


def _mean_of_shares(ks: Sequence[int], ns: Sequence[int], value: float) -> Estimate:
    """A mean of S proportions: each exact interval at ``1 - 0.05 / S`` (Bonferroni), averaged."""
    level = 1.0 - 0.05 / len(ks)
    ends = [clopper_pearson(k, n, level) for k, n in zip(ks, ns)]
    lo = sum(e[0] for e in ends) / len(ends)
    hi = sum(e[1] for e in ends) / len(ends)
    return Estimate(value, min(lo, value), max(hi, value), sum(ns))


def _mask_norms(res: ScanResult) -> torch.Tensor:
    """(S, K) Neural Cleanse's mask L1 norm per seed and class."""
    assert res.runs[0].per_class is not None
    k = int(res.runs[0].per_class.numel())
    return torch.tensor([[r.extra[f"l1_class_{c}"] for c in range(k)] for r in res.runs])


def _score(
    res: ScanResult, g: torch.Generator, present: torch.Tensor | None, shares: Sequence[int] | None
) -> tuple[Estimate, str]:
    runs = res.runs
    tags = SCANNERS.tags(res.scanner)
    if MAD_SCORE in tags:
        if res.scanner == NC:  # the raw values behind its indices: the masks' L1 norms
            values, sign = _mask_norms(res), -1.0
        else:  # the indices stand for the raw strengths (invariant under affine maps)
            if present is None:
                raise InputError(f"{res.scanner}'s interval needs the classes present in the training set")
            values, sign = torch.stack([r.per_class for r in runs])[:, present], 1.0  # type: ignore[misc]
        k = int(values.shape[1])
        boot = _smoothed(values, sign, g).amax(dim=2).mean(dim=1)
        return _percentile(boot, res.score, k), f"smoothed bootstrap over the {k} classes ({N_CLASS_BOOT} resamples)"
    if SHARE_SCORE in tags:
        if shares is None or len(shares) != len(runs):
            raise InputError(f"{res.scanner}'s interval needs the number of inputs behind each seed's share")
        ks = [round(float(r.score) * n) for r, n in zip(runs, shares)]
        if len(runs) == 1:
            lo, hi = clopper_pearson(ks[0], shares[0])
            return Estimate(res.score, min(lo, res.score), max(hi, res.score), shares[0]), "exact (Clopper-Pearson)"
        return _mean_of_shares(ks, shares, res.score), f"exact, Bonferroni over {len(runs)} seeds"
    scores = torch.tensor(res.scores, dtype=torch.float64)
    s = len(scores)
    if s < 2:
        raise InputError(f"trojans: the interval of {res.scanner}'s score needs n_seeds >= 2 (got {s})")
    half = float(stats.t.ppf(0.975, s - 1)) * float(scores.std()) / math.sqrt(s)
    return Estimate(res.score, res.score - half, res.score + half, s), f"Student's t over {s} seeds"


def summarize_scan(
    res: ScanResult,
    generator: torch.Generator,
    *,
    per_class_generator: torch.Generator | None = None,
    present: torch.Tensor | None = None,
    shares: Sequence[int] | None = None,
) -> ScanSummary:
    """The scan's score with its interval (module docstring), its flag rate over seeds and, for
    Neural Cleanse, each class's anomaly index with its interval.

    Args:
        res: a scanner's result over one or more seeds.
        generator: the score's class bootstrap (MAD scanners; drawn from only for them).
        per_class_generator: Neural Cleanse's per-class bootstrap (default: continue ``generator``).
        present: a MAD scanner other than Neural Cleanse (spectral signatures): (K,) bool, the
            classes with enough training inputs to be scored (those its indices cover).
        shares: a share scanner (STRIP, ABS): per seed, the number of inputs behind its share.
    """
    score, how = _score(res, generator, present, shares)
    seeds_flagging = sum(v > res.threshold for v in res.scores)
    flag_rate = proportion(seeds_flagging, len(res.scores))
    if res.scanner != NC or res.per_class is None:
        return ScanSummary(score, how, flag_rate)
    norms = _mask_norms(res)
    k = int(res.per_class.numel())
    boot = _smoothed(norms, -1.0, per_class_generator or generator).mean(dim=1)  # (B, K)
    index = tuple(_percentile(boot[:, c], float(v), k) for c, v in enumerate(res.per_class.tolist()))
    return ScanSummary(score, how, flag_rate, index, norms)
