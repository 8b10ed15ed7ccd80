"""Calibration: are the model's confidences honest? Metrics, reliability data and recalibration.

Modules by job: :mod:`.binned` (ECE, MCE, RMS error, reliability data), :mod:`.scoring` (Brier,
NLL), :mod:`.stats` (per-input terms for every metric and its bootstrap), :mod:`.scaling`
(temperature and vector scaling), :mod:`.evaluate` (before/after with intervals, as the audit
stores it).

Example:
    >>> from mlsafety.monitoring import calibration
    >>> calibration.ece(logits.softmax(1), labels)
    >>> scaler = calibration.TemperatureScaler().fit(val_logits, val_labels)
    >>> calibration.ece(scaler.predict_proba(test_logits), test_labels)
    >>> calibration.temperature_estimate(val_logits, val_labels, scaler.temperature_)  # T with 95% CI
    >>> calibration.evaluate_calibration(test_logits, test_labels, val_logits, val_labels)  # all, with CIs
"""

from typing import Any

from mlsafety.monitoring.calibration.binned import (
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
from mlsafety.monitoring.calibration.evaluate import (
    BINNED_METRICS,
    CalibrationResult,
    Recalibrated,
    evaluate_calibration,
    metric_estimate,
)
from mlsafety.monitoring.calibration.scaling import (
    CALIBRATORS,
    Calibrator,
    TemperatureScaler,
    VectorScaler,
    fit_inverse_temperature,
    temperature_estimate,
)
from mlsafety.monitoring.calibration.scoring import NLL_EPS, brier, brier_per_sample, nll, nll_per_sample
from mlsafety.monitoring.calibration.stats import METRICS, CalibrationStats, classwise_ece


def create(name: str, **params: Any) -> Calibrator:
    """A calibrator by registry name (``temperature``, ``vector``)."""
    return CALIBRATORS.create(name, **params)


def available() -> list[str]:
    """Registered calibrator names, sorted."""
    return CALIBRATORS.available()


__all__ = [
    "BINNED_METRICS",
    "CALIBRATORS",
    "METRICS",
    "NLL_EPS",
    "CalibrationResult",
    "CalibrationStats",
    "Calibrator",
    "Recalibrated",
    "Reliability",
    "TemperatureScaler",
    "VectorScaler",
    "adaptive_ece",
    "available",
    "bin_index",
    "brier",
    "brier_per_sample",
    "calibration_error",
    "classwise_ece",
    "confidence_and_correct",
    "create",
    "ece",
    "evaluate_calibration",
    "fit_inverse_temperature",
    "mce",
    "metric_estimate",
    "nll",
    "nll_per_sample",
    "reliability",
    "rms_calibration_error",
    "temperature_estimate",
    "weighted_calibration_error",
]
