"""Metrics: ranking metrics for detectors, proportions, and their 95% intervals."""

from __future__ import annotations

from mlsafety.metrics._exact import count_weighted_sums
from mlsafety.metrics._fused import ood_metrics
from mlsafety.metrics._intervals import (
    Estimate,
    accuracy,
    bootstrap_counts,
    bootstrap_mean,
    bootstrap_statistic,
    bootstrap_two_sample,
    bootstrap_weighted,
    clopper_pearson,
    clopper_pearson_lower,
    median,
    percentile_interval,
    proportion,
    wilson,
)
from mlsafety.metrics._ranking import (
    FPR_CONVENTIONS,
    aupr_in,
    aupr_out,
    auroc,
    fpr95_id_positive,
    fpr95_ood_positive,
    fpr_at_95_tpr,
    fpr_at_tpr,
)
from mlsafety.metrics._roc import roc_points

OOD_METRICS = {
    "auroc": auroc,
    "aupr_in": aupr_in,
    "aupr_out": aupr_out,
    "fpr95_id_positive": fpr95_id_positive,
    "fpr95_ood_positive": fpr95_ood_positive,
}
"""The detection metrics the audit stores for every detector and OOD set, by metric name (FPR@95 in
both conventions: in-distribution positive and OOD positive)."""

__all__ = [
    "FPR_CONVENTIONS",
    "OOD_METRICS",
    "Estimate",
    "accuracy",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bootstrap_counts",
    "bootstrap_mean",
    "bootstrap_statistic",
    "bootstrap_two_sample",
    "bootstrap_weighted",
    "clopper_pearson",
    "clopper_pearson_lower",
    "count_weighted_sums",
    "fpr95_id_positive",
    "fpr95_ood_positive",
    "fpr_at_95_tpr",
    "fpr_at_tpr",
    "median",
    "ood_metrics",
    "percentile_interval",
    "proportion",
    "roc_points",
    "wilson",
]
