"""Directed sparsification (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution
Detection", ECCV 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
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


@register("dice", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class DICE(Detector):
    """Anomaly score = energy of logits from a sparsified head ``-logsumexp(f (M * W)^T + b)``.

    The mask ``M`` (``mask_``, K x D) keeps the weights whose contribution ``mean_f[j] * W[k, j]``
    on in-distribution data is in the top ``(100 - percentile)%``.

    Args:
        percentile: sparsity in [0, 100) (paper default).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    percentile = Param(90.0, float, low=0, high=100, high_open=True, doc="weight sparsity percentile")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        w, b = head_of(clf)
        contrib = features_of(outputs).float().mean(dim=0)[None, :] * w.float()
        keep = max(1, contrib.numel() - round(contrib.numel() * self.percentile / 100.0))
        idx = contrib.flatten().topk(keep).indices
        mask = torch.zeros(contrib.numel(), dtype=torch.bool, device=w.device)
        mask[idx] = True
        self.mask_ = mask.reshape(contrib.shape)
        self.weight_ = w.float() * self.mask_
        self.bias_ = b.float()

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = features_of(outputs).float()
        return energy_of(f @ self.weight_.T + self.bias_)
