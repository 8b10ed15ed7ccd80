"""Activation shaping (Djurisic et al., "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import Detector, energy_of, features_of, head_of, register


def prune_mask(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """Boolean mask (N, D) keeping each row's activations at or above its ``percentile`` (the
    top ``ceil(D * (1 - percentile / 100))`` values)."""
    d = features.shape[1]
    keep = max(1, d - round(d * percentile / 100.0))
    idx = features.topk(keep, dim=1).indices
    return torch.zeros_like(features, dtype=torch.bool).scatter_(1, idx, True)


@register("ash")
class ASH(Detector):
    """Anomaly score = energy of the logits recomputed from shaped features.

    Each feature row keeps its top ``(100 - percentile)%`` activations and zeroes the rest;
    ``variant`` ``"s"`` then scales the kept ones by ``exp(s1 / s2)`` (sum before / after
    pruning), ``"p"`` only prunes, ``"b"`` binarises the kept ones to ``s1 / #kept``. Assumes
    non-negative (post-ReLU) features, as the paper does.

    Args:
        percentile: pruning percentile in [0, 100) (paper's ASH-S default for CIFAR).
        variant: ``"s"``, ``"p"`` or ``"b"``.
    """

    needs = frozenset({"features", "logits"})

    def __init__(self, percentile: float = 90.0, variant: str = "s") -> None:
        if not 0 <= percentile < 100:
            raise InputError(f"ash percentile must lie in [0, 100), got {percentile}")
        if variant not in ("s", "p", "b"):
            raise InputError(f"ash variant must be 's', 'p' or 'b', got {variant!r}")
        self.percentile = percentile
        self.variant = variant

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        """The shaped features (N, D)."""
        f = features.float()
        mask = prune_mask(f, self.percentile)
        pruned = f * mask
        s1 = f.sum(dim=1, keepdim=True)
        s2 = pruned.sum(dim=1, keepdim=True)
        if self.variant == "p":
            return pruned
        if self.variant == "b":
            return mask.float() * s1 / mask.sum(dim=1, keepdim=True)
        return pruned * torch.exp(s1 / s2.clamp_min(1e-12))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        f = self.shape(features_of(outputs))
        return energy_of(f @ w.T.float() + b.float())
