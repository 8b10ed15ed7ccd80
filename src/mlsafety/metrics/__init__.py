"""Metrics: ranking metrics for detectors, proportions, and their 95% intervals."""

from __future__ import annotations

import torch

from mlsafety.metrics._intervals import (
    Estimate,
    accuracy,
    bootstrap_mean,
    bootstrap_statistic,
    bootstrap_two_sample,
    clopper_pearson,
    proportion,
    wilson,
)
from mlsafety.metrics._ranking import aupr_in, aupr_out, auroc, fpr_at_95_tpr, fpr_at_tpr

OOD_METRICS = {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr_at_95_tpr": fpr_at_95_tpr}
"""The four detection metrics the audit stores for every detector and OOD set, by metric name."""


def ood_metrics(
    in_scores: torch.Tensor, out_scores: torch.Tensor, n_boot: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95TPR, each with a seeded bootstrap 95% interval."""
    return {
        name: bootstrap_two_sample(fn, in_scores, out_scores, n_boot=n_boot, seed=seed)
        for name, fn in OOD_METRICS.items()
    }


__all__ = [
    "OOD_METRICS",
    "Estimate",
    "accuracy",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bootstrap_mean",
    "bootstrap_statistic",
    "bootstrap_two_sample",
    "clopper_pearson",
    "fpr_at_95_tpr",
    "fpr_at_tpr",
    "ood_metrics",
    "proportion",
    "wilson",
]
