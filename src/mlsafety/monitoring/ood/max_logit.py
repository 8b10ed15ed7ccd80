"""Maximum logit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, QUICK, TEXT, Detector, register


@register("max-logit", tags=(QUICK, IMAGE, TEXT))
class MaxLogit(Detector):
    """Anomaly score ``-max_k logits_k``."""

    needs = frozenset({"logits"})

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return -outputs.logits.amax(dim=1)
