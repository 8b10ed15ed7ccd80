"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers", 2019)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlsafety.core import InputError, Param, unwrap_logits
from mlsafety.robustness.augment.base import Augmentation, MixedBatch, numpy_rng, register_augmentation


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator) -> MixedBatch:
    """Paste a box from a shuffled copy of the batch; labels mixed by the pasted area.

    ``lam ~ Beta(alpha, alpha)``; the box has area ``(1 - lam) H W`` and a uniform centre, clipped to
    the image, and ``lam`` is recomputed from the clipped box (one box per batch, as in the paper).
    """
    if alpha <= 0:
        raise InputError(f"cutmix alpha must be positive, got {alpha}")
    rng = numpy_rng(g)
    lam = float(rng.beta(alpha, alpha))
    n, _, h, w = x.shape
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    perm = torch.randperm(n, generator=g, device=g.device).to(x.device)
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    return MixedBatch(out, y, y[perm], lam)


@register_augmentation("cutmix")
class CutMix(Augmentation):
    """CutMix with ``lam ~ Beta(alpha, alpha)`` and the cross-entropy against the area-mixed labels."""

    alpha = Param(1.0, float, low=0, low_open=True, doc="Beta(alpha, alpha) of the kept area share")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = cutmix(x, y, self.alpha, generator)
        return batch.loss(unwrap_logits(model(batch.x)))
