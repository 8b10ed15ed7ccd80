"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", 2018)."""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import InputError, Param, unwrap_logits
from mlsafety.robustness.augment.base import Augmentation, MixedBatch, numpy_rng, register_augmentation


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator) -> MixedBatch:
    """Convex combinations of the batch with a shuffled copy: ``lam x + (1 - lam) x[perm]``.

    ``lam ~ Beta(alpha, alpha)``, one per batch as in the paper; the labels mix the same way.
    """
    if alpha <= 0:
        raise InputError(f"mixup alpha must be positive, got {alpha}")
    lam = float(numpy_rng(g).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g, device=g.device).to(x.device)
    return MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)


@register_augmentation("mixup")
class Mixup(Augmentation):
    """Mixup with ``lam ~ Beta(alpha, alpha)`` and the cross-entropy against the mixed labels."""

    alpha = Param(1.0, float, low=0, low_open=True, doc="Beta(alpha, alpha) of the mixing weight (1: uniform)")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = mixup(x, y, self.alpha, generator)
        return batch.loss(unwrap_logits(model(batch.x)))
