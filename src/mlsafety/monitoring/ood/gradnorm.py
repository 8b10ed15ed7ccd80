"""GradNorm (Huang et al., "On the Importance of Gradients for Detecting Distributional Shifts in
the Wild", NeurIPS 2021)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, features_of, register
from mlsafety.monitoring.ood.engine import float64


@register("gradnorm", tags=(IMAGE, TEXT))
class GradNorm(Detector):
    """Anomaly score ``-||d KL(u || softmax(logits / T)) / d W||_1``, the L1 norm of the gradient
    with respect to the head's weight of the KL divergence to the uniform distribution ``u``.

    For a linear head that gradient is the outer product ``(p - u) f^T / T``, so its L1 norm is
    ``||p - u||_1 ||f||_1 / T``: computed in closed form from one shared forward pass instead of
    one backward pass per input (a test checks it against autograd). In-distribution inputs have
    larger gradients, hence the minus sign.

    Args:
        temperature: ``T`` (paper default).
    """

    needs = frozenset({"features", "logits"})

    temperature = Param(1.0, float, low=0, low_open=True, doc="temperature T of the softmax")

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        logits = float64(outputs.logits)
        p = (logits / self.temperature).softmax(dim=1)
        u = 1.0 / logits.shape[1]
        f = float64(features_of(outputs))
        return -(p - u).abs().sum(dim=1) * f.abs().sum(dim=1) / self.temperature
