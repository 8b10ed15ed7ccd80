"""Maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", 2017)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, QUICK, TEXT, Detector, register


@register("msp", tags=(QUICK, IMAGE, TEXT))
class MSP(Detector):
    """Anomaly score ``-max_k softmax(logits)_k``: the less confident, the more anomalous."""

    needs = frozenset({"logits"})

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return -outputs.logits.softmax(dim=1).amax(dim=1)
