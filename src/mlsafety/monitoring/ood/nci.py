"""Neural Collapse Inspired detector (Liu & Qin, "Detecting Out-of-distribution through the Lens of
Neural Collapse", CVPR 2025)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import (
    IMAGE,
    NEEDS_HEAD_WEIGHTS,
    OPT_IN,
    TEXT,
    Detector,
    features_of,
    head_of,
    register,
)
from mlsafety.monitoring.ood.engine import float64


@register("nci", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS, OPT_IN))
class NCI(Detector):
    """Anomaly score ``-(w_c . (f - mu) / ||f - mu|| + alpha ||f||_1)``.

    Under neural collapse, in-distribution features centred by the global in-distribution mean ``mu``
    (``mean_``) point along the head's weight vector ``w_c`` of their predicted class ``c``; the first
    term (the paper's proximity score: the projection of the unit centred feature onto ``w_c``,
    ``w_c`` left unnormalised as in the paper) measures that, and the L1 feature norm (the paper's
    filter term, weighted by ``alpha``) adds the norm signal OOD inputs tend to lack. The predicted
    class is the argmax of the model's logits.

    Args:
        alpha: weight of the L1 feature norm (the paper's CIFAR-10 default; 0 keeps the proximity
            term alone).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    alpha = Param(1e-4, float, low=0, doc="weight of the feature L1 norm term")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.mean_ = float64(features_of(outputs)).mean(dim=0)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = float64(features_of(outputs))
        w, _ = head_of(clf)
        c = outputs.logits.argmax(dim=1)
        centred = f - self.mean_.to(f.device)
        proximity = (w.to(f.device, torch.float64)[c] * centred).sum(dim=1)
        proximity = proximity / torch.linalg.vector_norm(centred, dim=1).clamp_min(1e-12)
        return -(proximity + self.alpha * f.abs().sum(dim=1))
