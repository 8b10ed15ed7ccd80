"""AUROC, AUPR-In, AUPR-Out and FPR@95 (both conventions) with bootstrap intervals, from one histogram pass.

The scores are mapped once to their distinct values and each bootstrap resample becomes two
histograms over those values, from which the four metrics follow by cumulative sums, ties counting
as one threshold exactly as in :mod:`mlsafety.metrics._ranking`. The resampling draws are those of
:func:`~mlsafety.metrics.bootstrap_two_sample` with the same seed, so the intervals equal what four
separate bootstraps would give (a test checks it), at a fraction of the cost: an audit scores dozens
of detectors on several OOD sets.

Memory is bounded whatever ``n_boot`` is: the resamples are evaluated a few at a time, so that no
(resamples x distinct scores) array has more than :data:`BLOCK_ELEMENTS` entries, and the draws of
each chunk of ``chunk`` resamples are read from two copies of the generator (one at the start of the
in-distribution indices, one past them at the start of the OOD indices), which reproduces the stream
of :func:`~mlsafety.metrics.bootstrap_two_sample` exactly: PyTorch's CPU ``randint`` is sequential.
"""

from __future__ import annotations

import torch

from mlsafety.core import InputError, generator
from mlsafety.metrics._intervals import CHUNK_ELEMENTS, Estimate

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive")
BLOCK_ELEMENTS = CHUNK_ELEMENTS // 8
"""Entries of the widest (resamples, max(N, M, distinct scores)) array evaluated at once (2 MB of
float64): :func:`_from_histograms` keeps about fifteen such arrays alive, so a block needs ~30 MB
and the bootstrap's memory is O(N + M + n_boot) with a small constant."""


def _from_histograms(ha: torch.Tensor, hb: torch.Tensor, tpr: float) -> torch.Tensor:
    """The five metrics (B, 5) from in/out counts (B, U) over distinct scores in ascending order."""
    n = ha.sum(dim=1, keepdim=True)
    m = hb.sum(dim=1, keepdim=True)
    cum_a = ha.cumsum(dim=1)  # in-distribution scores <= each distinct value
    cum_b = hb.cumsum(dim=1)
    auroc = (hb * (cum_a - 0.5 * ha)).sum(dim=1) / (n * m)[:, 0]
    # AUPR-In: in-distribution positives, ranked from the lowest anomaly score up
    aupr_in = (ha * cum_a / (cum_a + cum_b)).nan_to_num_(0.0).sum(dim=1) / n[:, 0]
    # AUPR-Out: OOD positives, ranked from the highest anomaly score down (counts >= each value)
    up_a = n - cum_a + ha
    up_b = m - cum_b + hb
    aupr_out = (hb * up_b / (up_a + up_b)).nan_to_num_(0.0).sum(dim=1) / m[:, 0]
    # FPR@95, in-distribution positive: the lowest threshold keeping tpr of ID inputs, share of OOD accepted
    hit = cum_a >= (tpr - 1e-12) * n
    idx = hit.to(torch.uint8).argmax(dim=1, keepdim=True)
    fpr_id = cum_b.gather(1, idx)[:, 0] / m[:, 0]
    # FPR@95, OOD positive: the highest threshold catching tpr of OOD inputs, share of ID flagged
    caught = up_b >= (tpr - 1e-12) * m  # a prefix of the ascending values
    last = (caught.sum(dim=1, keepdim=True) - 1).clamp_min(0)
    fpr_ood = up_a.gather(1, last)[:, 0] / n[:, 0]
    return torch.stack([auroc, aupr_in, aupr_out, fpr_id, fpr_ood], dim=1)


def ood_metrics(
    in_scores: torch.Tensor,
    out_scores: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 250,
    block_elements: int | None = None,
) -> dict[str, Estimate]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95 in both conventions with seeded percentile-bootstrap intervals.

    ``fpr95_id_positive`` is :func:`~mlsafety.metrics.fpr95_id_positive` (in-distribution positive,
    ODIN / OpenOOD v1.0), ``fpr95_ood_positive`` is :func:`~mlsafety.metrics.fpr95_ood_positive`
    (OOD positive, OpenOOD v1.5 / pytorch-ood).

    Args:
        in_scores: anomaly scores of in-distribution inputs (N,).
        out_scores: anomaly scores of OOD inputs (M,); OOD is the positive class for AUROC.
        n_boot: bootstrap resamples (each sample resampled independently).
        seed: seed of the resampling (the generator of :func:`mlsafety.metrics.bootstrap_two_sample`).
        confidence: interval level.
        chunk: resamples per chunk of the random stream (as in
            :func:`~mlsafety.metrics.bootstrap_two_sample`: this fixes which draws a seed gives, not
            the memory, which ``block_elements`` bounds).
        block_elements: entries of the widest array evaluated at once (default :data:`BLOCK_ELEMENTS`).
    """
    a = torch.as_tensor(in_scores).double().reshape(-1).cpu()
    b = torch.as_tensor(out_scores).double().reshape(-1).cpu()
    if a.numel() == 0 or b.numel() == 0:
        raise InputError("detection metrics need at least one in-distribution and one OOD score")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError("scores contain NaN or infinite values")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    n, m = a.numel(), b.numel()
    _, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
    ua, ub = inverse[:n], inverse[n:]
    u = int(inverse.max()) + 1

    width = max(n, m, u)
    block = max(1, min(chunk, (block_elements or BLOCK_ELEMENTS) // width))
    ones = torch.ones(block, max(n, m), dtype=torch.float64)

    def hist(index: torch.Tensor) -> torch.Tensor:
        rows, cols = index.shape
        return torch.zeros(rows, u, dtype=torch.float64).scatter_add_(1, index, ones[:rows, :cols])

    value = _from_histograms(hist(ua[None]), hist(ub[None]), 0.95)[0]
    g = generator(seed, "bootstrap", n, m)
    boot = torch.empty(n_boot, len(METRICS), dtype=torch.float64)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        # this chunk's stream: rows x n indices into the ID scores, then rows x m into the OOD scores
        g_in = torch.Generator()
        g_in.set_state(g.get_state())
        for r in range(0, rows, block):  # move g past the ID indices, to the first OOD index
            torch.randint(0, n, (min(block, rows - r), n), generator=g)
        for r in range(0, rows, block):
            size = min(block, rows - r)
            ia = torch.randint(0, n, (size, n), generator=g_in)
            ib = torch.randint(0, m, (size, m), generator=g)
            boot[start + r : start + r + size] = _from_histograms(hist(ua[ia]), hist(ub[ib]), 0.95)
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    out = {}
    for j, name in enumerate(METRICS):
        v = float(value[j])
        lo, hi = torch.quantile(boot[:, j], q).tolist()
        out[name] = Estimate(v, min(lo, v), max(hi, v), n + m)
    return out
