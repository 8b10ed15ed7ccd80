"""Monitoring: can we tell when the model is about to fail or is being abused?

Sub-packages: ``ood`` (OOD detectors), ``calibration`` (calibration metrics and recalibration),
``selective`` (selective prediction), ``training`` (outlier exposure).
"""

from mlsafety.monitoring import calibration, ood, selective, training

__all__ = ["calibration", "ood", "selective", "training"]
