"""SCALE (Xu et al., "Scaling for Training Time and Post-hoc Out-of-distribution Detection
Enhancement", ICLR 2024)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.ash import keep_count
from mlsafety.monitoring.ood.base import Detector, energy_of, features_of, head_of, register, top_k_sum


@register("scale")
class SCALE(Detector):
    """Anomaly score = energy of the logits recomputed from scaled, unpruned features
    ``f * exp(s1 / s2)``, where ``s1`` is the sum of the activations and ``s2`` the sum of those
    at or above the row's ``percentile`` (ASH's scale without its pruning).

    Args:
        percentile: in [0, 100) (paper default).
    """

    needs = frozenset({"features", "logits"})

    def __init__(self, percentile: float = 85.0) -> None:
        if not 0 <= percentile < 100:
            raise InputError(f"scale percentile must lie in [0, 100), got {percentile}")
        self.percentile = percentile

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        f = features_of(outputs).float()
        s1 = f.sum(dim=1, keepdim=True)
        s2 = top_k_sum(f, keep_count(f.shape[1], self.percentile))[:, None].to(f.device)
        # (r f) W^T = r (f W^T): the row scale applies to the (N, K) product
        return energy_of((f @ w.T.float()) * torch.exp(s1 / s2.clamp_min(1e-12)) + b.float())
