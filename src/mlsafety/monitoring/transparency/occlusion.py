"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Param
from mlsafety.monitoring.transparency.base import Attribution, register, target_logit


@register("occlusion")
class Occlusion(Attribution):
    """Drop in the target logit when a square patch (all channels) is replaced by ``baseline``.

    Each pixel gets the mean drop over the patches that cover it (as Captum's ``Occlusion``).
    Needs no gradients: images (N, C, H, W) only.

    Args:
        window: patch side in pixels (clipped to the image size).
        stride: step between patch positions.
        baseline: the value that replaces occluded pixels.
        batch_size: occluded copies per forward pass.
    """

    needs_grad = False

    window = Param(2, int, low=1, doc="patch side in pixels")
    stride = Param(1, int, low=1, doc="step between patch positions")
    baseline = Param(0.0, float, doc="value that replaces occluded pixels")
    batch_size = Param(512, int, low=1, store=False, doc="occluded copies per forward pass")

    def _masks(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        wh, ww = min(self.window, h), min(self.window, w)
        tops = list(range(0, h - wh + 1, self.stride))
        lefts = list(range(0, w - ww + 1, self.stride))
        if tops[-1] != h - wh:
            tops.append(h - wh)
        if lefts[-1] != w - ww:
            lefts.append(w - ww)
        masks = torch.zeros(len(tops) * len(lefts), 1, h, w, device=device)
        for i, (t, left) in enumerate((t, lf) for t in tops for lf in lefts):
            masks[i, :, t : t + wh, left : left + ww] = 1.0
        return masks

    def _attribute(self, clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise InputError(f"occlusion needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        masks = self._masks(h, w, x.device).to(x.dtype)
        p = masks.shape[0]
        full = target_logit(clf, x, target)
        drops = torch.empty(n * p, dtype=x.dtype, device=x.device)
        for start in range(0, n * p, self.batch_size):
            flat = torch.arange(start, min(start + self.batch_size, n * p), device=x.device)
            owner, k = flat // p, flat % p
            mk = masks[k]
            occluded = x[owner] * (1 - mk) + self.baseline * mk
            drops[flat] = full[owner] - target_logit(clf, occluded, target[owner])
        drop_map = torch.einsum("np,pchw->nchw", drops.view(n, p), masks)
        cover = masks.sum(dim=0, keepdim=True).clamp_min(1)
        return (drop_map / cover).expand_as(x).contiguous()
