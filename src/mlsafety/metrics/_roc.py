"""Points of a ROC curve, for plots (the areas and rates with intervals are in ``_ranking`` / ``_fused``)."""

from __future__ import annotations

import torch

from mlsafety.core._errors import InputError


def roc_points(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False and true positive rates of the ROC curve, OOD inputs as the positives (higher score =
    more anomalous), one point per distinct threshold, starting at ``(0, 0)`` and ending at ``(1, 1)``.

    Tied scores form one threshold (as scikit-learn's ``roc_curve`` with ``drop_intermediate=False``),
    so the area under the points by the trapezoid rule is :func:`~mlsafety.metrics.auroc`.

    Args:
        in_scores: anomaly scores of in-distribution inputs (N,) (the negatives).
        out_scores: anomaly scores of OOD inputs (M,) (the positives).

    Returns:
        ``(fpr, tpr)``, float64 tensors of the same length on the CPU.

    Raises:
        InputError: an empty sample, or a NaN or infinite score (refused as by the areas).
    """
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise InputError("roc_points needs at least one in-distribution and one OOD score")
    scores = torch.cat([in_scores.reshape(-1).cpu(), out_scores.reshape(-1).cpu()]).double()
    if not bool(torch.isfinite(scores).all()):
        raise InputError("scores contain NaN or infinite values")
    pos = torch.cat([torch.zeros(in_scores.numel()), torch.ones(out_scores.numel())]).double()
    order = scores.argsort(descending=True, stable=True)
    s, p = scores[order], pos[order]
    end = torch.ones_like(s, dtype=torch.bool)
    end[:-1] = s[:-1] != s[1:]
    tpr = torch.cat([torch.zeros(1), (p.cumsum(0) / p.sum())[end]])
    fpr = torch.cat([torch.zeros(1), ((1 - p).cumsum(0) / (1 - p).sum())[end]])
    return fpr, tpr
