"""Calibration: are the model's confidences honest? Metrics, reliability data and recalibration.

Example:
    >>> from mlsafety.monitoring import calibration
    >>> calibration.ece(logits.softmax(1), labels)
    >>> scaler = calibration.TemperatureScaler().fit(val_logits, val_labels)
    >>> calibration.ece(scaler.predict_proba(test_logits), test_labels)
    >>> calibration.temperature_estimate(val_logits, val_labels, scaler.temperature_)  # T with 95% CI
"""

from typing import Any

from mlsafety.monitoring.calibration.metrics import (
    METRICS,
    NLL_EPS,
    CalibrationStats,
    Reliability,
    adaptive_ece,
    bin_index,
    brier,
    brier_per_sample,
    calibration_error,
    classwise_ece,
    confidence_and_correct,
    ece,
    mce,
    nll,
    nll_per_sample,
    reliability,
    rms_calibration_error,
    weighted_calibration_error,
)
from mlsafety.monitoring.calibration.scaling import (
    CALIBRATORS,
    Calibrator,
    TemperatureScaler,
    VectorScaler,
    fit_inverse_temperature,
    temperature_estimate,
)


def create(name: str, **params: Any) -> Calibrator:
    """A calibrator by registry name (``temperature``, ``vector``)."""
    return CALIBRATORS.create(name, **params)


def available() -> list[str]:
    """Registered calibrator names, sorted."""
    return CALIBRATORS.available()


__all__ = [
    "CALIBRATORS",
    "METRICS",
    "NLL_EPS",
    "CalibrationStats",
    "Calibrator",
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
    "fit_inverse_temperature",
    "mce",
    "nll",
    "nll_per_sample",
    "reliability",
    "rms_calibration_error",
    "temperature_estimate",
    "weighted_calibration_error",
]
