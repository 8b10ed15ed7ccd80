"""Predictive entropy of the softmax distribution (a classic uncertainty baseline)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, register


@register("entropy", tags=(IMAGE, TEXT))
class Entropy(Detector):
    """Anomaly score ``H(p) = -sum_k p_k log p_k`` with ``p = softmax(logits)`` (nats)."""

    needs = frozenset({"logits"})

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        logp = outputs.logits.log_softmax(dim=1)
        return -(logp.exp() * logp).sum(dim=1)
