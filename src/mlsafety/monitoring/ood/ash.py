"""Activation shaping (Djurisic et al., "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023)."""

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
from mlsafety.monitoring.ood.search import kth_largest


def prune_mask(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """Boolean mask (N, D) keeping each row's activations at or above its ``percentile`` (the
    top :func:`keep_count` values)."""
    idx = features.topk(keep_count(features.shape[1], percentile), dim=1).indices
    return torch.zeros_like(features, dtype=torch.bool).scatter_(1, idx, True)


def keep_count(d: int, percentile: float) -> int:
    """How many of ``d`` activations lie at or above the ``percentile``: ``d - round(d p / 100)``, at least 1.

    The authors' count (``n - int(np.round(n * percentile / 100))``): ``round`` goes half to even, so where
    ``d p / 100`` ends in .5 it can keep one fewer than ``ceil(d (1 - p / 100))`` (d = 10, p = 75: 2, not 3)."""
    return max(1, d - round(d * percentile / 100.0))


@register("ash", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
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

    percentile = Param(90.0, float, low=0, high=100, high_open=True, doc="pruning percentile (ASH-S, CIFAR)")
    variant = Param("s", str, choices=("s", "p", "b"), doc="s: prune and scale, p: prune, b: binarise")

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        """The shaped features (N, D)."""
        pruned, scale = self._pruned_and_scale(features)
        return pruned if scale is None else pruned * scale

    def _pruned_and_scale(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shaped features as pruned features and a per-row scale (N, 1) (None: no scaling)."""
        f = features.float()
        s1 = f.sum(dim=1, keepdim=True)
        if self.variant == "b":
            mask = prune_mask(f, self.percentile)
            return mask.float() * s1 / mask.sum(dim=1, keepdim=True), None
        # keep each row's values at or above its keep-th largest (a tie at the threshold keeps all tied
        # values; ties among the zeros of dead units change nothing)
        threshold = kth_largest(f, keep_count(f.shape[1], self.percentile))[:, None].to(f.device)
        pruned = f * (f >= threshold).to(f.dtype)  # a product with the mask: torch.where is slow on the CPU
        if self.variant == "p":
            return pruned, None
        s2 = pruned.sum(dim=1, keepdim=True)
        return pruned, torch.exp(s1 / s2.clamp_min(1e-12))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        pruned, scale = self._pruned_and_scale(features_of(outputs))
        product = pruned @ w.T.float()  # the row scale applies to the (N, K) product: (s f) W^T = s (f W^T)
        return energy_of((product if scale is None else product * scale) + b.float())
