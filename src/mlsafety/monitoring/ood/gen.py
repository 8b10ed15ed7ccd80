"""Generalized entropy (Liu et al., "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
Detection", CVPR 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, register


@register("gen", tags=(IMAGE, TEXT))
class GEN(Detector):
    """Anomaly score ``G_gamma(p) = sum over the top-M probabilities of p^gamma (1 - p)^gamma``.

    Args:
        gamma: the exponent (paper default).
        top_m: how many of the largest probabilities enter the sum (all when the model has fewer
            classes).
    """

    needs = frozenset({"logits"})

    gamma = Param(0.1, float, low=0, high=1, low_open=True, high_open=True, doc="the exponent")
    top_m = Param(100, int, low=1, doc="largest probabilities summed (all when fewer classes)")

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        p = outputs.logits.softmax(dim=1)
        m = min(self.top_m, p.shape[1])
        top = p if m == p.shape[1] else p.topk(m, dim=1).values  # the sum does not depend on the order
        return (top.pow(self.gamma) * (1 - top).clamp_min(0).pow(self.gamma)).sum(dim=1)
