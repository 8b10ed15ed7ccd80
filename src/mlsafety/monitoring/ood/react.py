"""Rectified activations (Sun et al., "ReAct: Out-of-distribution Detection With Rectified
Activations", NeurIPS 2021)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import (
    IMAGE,
    NEEDS_HEAD_WEIGHTS,
    QUICK,
    TEXT,
    Detector,
    energy_of,
    features_of,
    head_of,
    register,
)
from mlsafety.monitoring.ood.vra import activation_quantiles


@register("react", tags=(QUICK, IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class ReAct(Detector):
    """Anomaly score = energy of the logits recomputed from features clipped at ``c``:
    ``-logsumexp(W min(f, c) + b)``.

    ``c`` (``threshold_``) is the ``percentile``-th percentile of all in-distribution feature
    activations.

    Args:
        percentile: the clipping percentile in (0, 100] (paper default).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    percentile = Param(90.0, float, low=0, high=100, low_open=True, doc="clipping percentile of activations")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        # every activation, at any size (a strided sample past torch.quantile's limit read only some units)
        (self.threshold_,) = activation_quantiles(features_of(outputs), (self.percentile,))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        f = features_of(outputs).clamp_max(self.threshold_)
        return energy_of(f @ w.T.to(f.dtype) + b.to(f.dtype))
