"""Calibration before and after recalibration, every metric with its interval: the evaluation the
audit stores, from precomputed logits (the audit shares one forward pass between its checks).

Example:
    >>> from mlsafety.monitoring import calibration
    >>> res = calibration.evaluate_calibration(test_logits, test_labels, val_logits, val_labels, seed=0)
    >>> res.before["ece"], res.after["temperature"].metrics["ece"], res.temperature
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mlsafety.core import InputError, derive_seed
from mlsafety.metrics import Estimate, bootstrap_weighted
from mlsafety.monitoring.calibration.scaling import CALIBRATORS, Calibrator, TemperatureScaler, temperature_estimate
from mlsafety.monitoring.calibration.stats import METRICS, CalibrationStats

BINNED_METRICS = ("ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece")
"""Metrics that depend on the number of bins (a result row records ``n_bins`` with them)."""


def metric_estimate(metric: str, stats: CalibrationStats, n_boot: int = 500, seed: int = 0) -> Estimate:
    """A calibration metric with a seeded percentile-bootstrap 95% interval over inputs.

    Each resample is a row of multinomial counts over the inputs and the metric is computed from
    the per-input terms of ``stats`` with those weights (:meth:`CalibrationStats.weighted`), so
    memory is O(N + chunk x N) for any number of classes and resamples; the resamples are those of
    :func:`mlsafety.metrics.bootstrap_statistic` with the same seed and the metric as its name.

    Args:
        metric: one of :data:`METRICS`.
        stats: the predictions' per-input terms.
        n_boot: resamples.
        seed: seed of the resampling.
    """
    return bootstrap_weighted(
        lambda w: stats.weighted(metric, w), stats.n, n_boot, seed, name=metric, value=stats.value(metric)
    )


@dataclass(frozen=True)
class Recalibrated:
    """The test predictions after one calibrator fitted on the validation data.

    Attributes:
        name: the calibrator's registry name (``temperature``, ``vector``).
        calibrator: the fitted calibrator.
        stats: per-input terms of the recalibrated test predictions (reliability data, metrics).
        metrics: every requested metric with its bootstrap interval.
    """

    name: str
    calibrator: Calibrator
    stats: CalibrationStats
    metrics: dict[str, Estimate]

    @property
    def tag(self) -> str:
        """The suffix of this stage's metric names and seed streams (``_after_ts``)."""
        return f"_after_{self.calibrator.abbrev}"


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration of test predictions before and after recalibration.

    Attributes:
        stats: per-input terms of the predictions as given.
        before: every requested metric with its bootstrap 95% interval, before recalibration.
        after: one :class:`Recalibrated` per calibrator, by registry name, in the order asked.
        temperature: the fitted temperature with a bootstrap interval from refits on resampled
            validation data (when a temperature scaler was among the calibrators), else None.
        n_bins: the bins of the binned metrics.
    """

    stats: CalibrationStats
    before: dict[str, Estimate]
    after: dict[str, Recalibrated] = field(default_factory=dict)
    temperature: Estimate | None = None
    n_bins: int = 15

    def params(self, metric: str) -> dict[str, Any]:
        """The settings ``metric`` depends on beyond the data (``{"n_bins": ...}`` for binned ones)."""
        return {"n_bins": self.n_bins} if metric in BINNED_METRICS else {}


def evaluate_calibration(
    logits: torch.Tensor,
    labels: torch.Tensor,
    val_logits: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    calibrators: Sequence[str] = ("temperature",),
    metrics: Sequence[str] = METRICS,
    n_bins: int = 15,
    n_boot: int = 500,
    seed: int = 0,
    stream: Sequence[object] = (),
) -> CalibrationResult:
    """Every calibration metric of the test predictions, before and after each calibrator.

    Calibrators are fitted on the validation data only (Guo et al., "On Calibration of Modern
    Neural Networks", 2017) and applied to the test logits block by block in float64. Each metric
    carries a seeded percentile-bootstrap 95% interval over test inputs (:func:`metric_estimate`),
    the temperature one from weighted refits on resampled validation inputs
    (:func:`~mlsafety.monitoring.calibration.temperature_estimate`).

    Seeds: metric ``m`` draws from ``derive_seed(seed, *stream, m, "")`` before recalibration and
    ``derive_seed(seed, *stream, m, tag)`` after a calibrator (``tag`` is :attr:`Recalibrated.tag`,
    e.g. ``_after_ts``); the temperature from ``derive_seed(seed, *stream, "temperature")``. So
    every interval depends only on the seed and its names, not on which other metrics are asked.

    Args:
        logits: test logits (N, K), any float dtype and device.
        labels: test labels (N,).
        val_logits: validation logits (M, K); needed when ``calibrators`` is not empty.
        val_labels: validation labels (M,).
        calibrators: registry names of the calibrators to fit (see ``calibration.available()``).
        metrics: names from :data:`METRICS`.
        n_bins: equal-width (or equal-mass) bins of the binned metrics.
        n_boot: bootstrap resamples per interval.
        seed: the run seed.
        stream: names that make the seeds of this evaluation its own (the audit passes its check
            and hazard).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown calibration metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    if calibrators and (val_logits is None or val_labels is None):
        raise InputError("recalibration needs validation logits and labels (val_logits, val_labels), or calibrators=()")
    for name in calibrators:
        CALIBRATORS.get(name)  # an unknown name fails before any work

    def estimates(stats: CalibrationStats, tag: str) -> dict[str, Estimate]:
        return {m: metric_estimate(m, stats, n_boot, derive_seed(seed, *stream, m, tag)) for m in metrics}

    before = CalibrationStats.from_logits(logits, labels, n_bins)
    before_metrics = estimates(before, "")
    after: dict[str, Recalibrated] = {}
    temperature = None
    for name in calibrators:
        assert val_logits is not None and val_labels is not None
        scaler = CALIBRATORS.create(name).fit(val_logits, val_labels)
        stats = CalibrationStats.from_logits(logits, labels, n_bins, transform=scaler.transform)
        stage = Recalibrated(name, scaler, stats, {})
        stage.metrics.update(estimates(stats, stage.tag))
        after[name] = stage
        if isinstance(scaler, TemperatureScaler):
            t_seed = derive_seed(seed, *stream, "temperature")
            temperature = temperature_estimate(val_logits, val_labels, scaler.temperature_, n_boot, t_seed)
    return CalibrationResult(before, before_metrics, after, temperature, n_bins)
