"""Detection metrics with bootstrap intervals, all four from one histogram pass per resample.

:func:`ood_metrics_fast` returns exactly what :func:`mlsafety.metrics.ood_metrics` returns (same
resampling draws from the same seeded generator, same percentile intervals; a test checks the
agreement) but is far cheaper: the scores are mapped once to their distinct values, and each
resample becomes two histograms over those values, from which AUROC, AUPR-In, AUPR-Out and
FPR@TPR follow by cumulative sums, with ties handled as one threshold exactly as the reference
does. The audit scores dozens of detectors on several OOD sets, where this matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, as_classifier, derive_seed, generator
from mlsafety.metrics import Estimate
from mlsafety.monitoring.ood.base import DETECTORS, Detector, FitData, fit_detectors, score_detectors

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr")


def _from_histograms(ha: torch.Tensor, hb: torch.Tensor, tpr: float) -> torch.Tensor:
    """The four metrics (B, 4) from in/out counts (B, U) over distinct scores in ascending order."""
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
    hit = cum_a >= (tpr - 1e-12) * n
    idx = hit.to(torch.uint8).argmax(dim=1, keepdim=True)
    fpr = cum_b.gather(1, idx)[:, 0] / m[:, 0]
    return torch.stack([auroc, aupr_in, aupr_out, fpr], dim=1)


def ood_metrics_fast(
    in_scores: torch.Tensor,
    out_scores: torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 250,
) -> dict[str, Estimate]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95TPR with seeded percentile-bootstrap intervals.

    Args:
        in_scores: anomaly scores of in-distribution inputs (N,).
        out_scores: anomaly scores of OOD inputs (M,); OOD is the positive class for AUROC.
        n_boot: bootstrap resamples (each sample resampled independently).
        seed: seed of the resampling (the generator of :func:`mlsafety.metrics.bootstrap_two_sample`).
        confidence: interval level.
        chunk: resamples evaluated at once.
    """
    a = torch.as_tensor(in_scores).double().reshape(-1).cpu()
    b = torch.as_tensor(out_scores).double().reshape(-1).cpu()
    if a.numel() == 0 or b.numel() == 0:
        raise InputError("detection metrics need at least one in-distribution and one OOD score")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError("scores contain NaN or infinite values")
    n, m = a.numel(), b.numel()
    _, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
    ua, ub = inverse[:n], inverse[n:]
    u = int(inverse.max()) + 1

    def hist(index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(index.shape[0], u, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(index.shape, dtype=torch.float64)
        )

    value = _from_histograms(hist(ua[None]), hist(ub[None]), 0.95)[0]
    g = generator(seed, "bootstrap", n, m)
    boots = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        ia = torch.randint(0, n, (rows, n), generator=g)
        ib = torch.randint(0, m, (rows, m), generator=g)
        boots.append(_from_histograms(hist(ua[ia]), hist(ub[ib]), 0.95))
    boot = torch.cat(boots)
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    out = {}
    for j, name in enumerate(METRICS):
        v = float(value[j])
        lo, hi = torch.quantile(boot[:, j], q).tolist()
        out[name] = Estimate(v, min(lo, v), max(hi, v), n + m)
    return out


def evaluate(
    detectors: Sequence[str | Detector],
    model: nn.Module | Classifier,
    fit_data: FitData,
    in_x: torch.Tensor,
    ood_sets: Mapping[str, torch.Tensor],
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, dict[str, Estimate]]]:
    """Fit detectors on in-distribution ``fit_data`` and measure them on each OOD set.

    One forward pass per data set feeds every detector that needs only logits and features.

    Args:
        detectors: registry names (paper defaults) or detector instances (fitted here).
        model: the classifier.
        fit_data: in-distribution data to fit on (never the OOD sets).
        in_x: held-out in-distribution inputs (the negatives).
        ood_sets: OOD inputs by set name (the positives).
        n_boot: bootstrap resamples per interval.
        seed: seed of the bootstrap (derived per set and detector).
        batch_size: inputs per forward pass.

    Returns:
        ``result[set][detector][metric]`` with metrics ``auroc``, ``aupr_in``, ``aupr_out`` and
        ``fpr_at_95_tpr``, each an :class:`~mlsafety.metrics.Estimate` with a 95% interval.
    """
    clf = as_classifier(model)
    dets = [DETECTORS.create(d) if isinstance(d, str) else d for d in detectors]
    fit_detectors(dets, clf, fit_data, batch_size)
    in_scores = score_detectors(dets, clf, in_x, batch_size)
    result: dict[str, dict[str, dict[str, Estimate]]] = {}
    for set_name, x in ood_sets.items():
        out_scores = score_detectors(dets, clf, x, batch_size)
        result[set_name] = {
            name: ood_metrics_fast(in_scores[name], out_scores[name], n_boot, derive_seed(seed, set_name, name))
            for name in in_scores
        }
    return result
