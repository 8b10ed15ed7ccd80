"""SCALE (Xu et al., "Scaling for Training Time and Post-hoc Out-of-distribution Detection
Enhancement", ICLR 2024)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.ash import keep_count
from mlsafety.monitoring.ood.base import (
    IMAGE,
    NEEDS_HEAD_WEIGHTS,
    TEXT,
    Detector,
    energy_of,
    features_of,
    head_of,
    register,
)
from mlsafety.monitoring.ood.search import top_k_sum


@register("scale", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class SCALE(Detector):
    """Anomaly score = energy of the logits recomputed from scaled, unpruned features
    ``f * exp(s1 / s2)``, where ``s1`` is the sum of the activations and ``s2`` the sum of those
    at or above the row's ``percentile`` (ASH's scale without its pruning). Assumes non-negative (post-ReLU)
    features, as the paper does: a row whose top sum is not positive gets an overflowing scale.

    Args:
        percentile: in [0, 100) (paper default).
    """

    needs = frozenset({"features", "logits"})

    percentile = Param(85.0, float, low=0, high=100, high_open=True, doc="percentile of the scale's top sum")

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        f = features_of(outputs).float()
        s1 = f.sum(dim=1, keepdim=True)
        s2 = top_k_sum(f, keep_count(f.shape[1], self.percentile))[:, None].to(f.device)
        # (r f) W^T = r (f W^T): the row scale applies to the (N, K) product
        return energy_of((f @ w.T.float()) * torch.exp(s1 / s2.clamp_min(1e-12)) + b.float())
