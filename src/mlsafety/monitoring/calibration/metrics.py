"""Calibration metrics: ECE (equal-width and equal-mass bins), MCE, RMS error, classwise ECE,
Brier score, NLL and reliability-diagram data.

The metrics live by job: binned errors and reliability data in
:mod:`~mlsafety.monitoring.calibration.binned` (with the binning convention), the proper scoring
rules in :mod:`~mlsafety.monitoring.calibration.scoring`, and the per-input terms every metric and
its bootstrap are computed from in :mod:`~mlsafety.monitoring.calibration.stats`. This module keeps
the names importable from their first home.
"""

from mlsafety.monitoring.calibration.binned import (
    BINNINGS,
    NORMS,
    Reliability,
    adaptive_ece,
    bin_index,
    calibration_error,
    confidence_and_correct,
    ece,
    mce,
    reliability,
    rms_calibration_error,
    weighted_calibration_error,
)
from mlsafety.monitoring.calibration.scoring import NLL_EPS, brier, brier_per_sample, nll, nll_per_sample
from mlsafety.monitoring.calibration.stats import METRICS, CalibrationStats, classwise_ece

__all__ = [
    "BINNINGS",
    "METRICS",
    "NLL_EPS",
    "NORMS",
    "CalibrationStats",
    "Reliability",
    "adaptive_ece",
    "bin_index",
    "brier",
    "brier_per_sample",
    "calibration_error",
    "classwise_ece",
    "confidence_and_correct",
    "ece",
    "mce",
    "nll",
    "nll_per_sample",
    "reliability",
    "rms_calibration_error",
    "weighted_calibration_error",
]
