"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014).

On text one token at a time is replaced by a neutral token (Li, Monroe & Jurafsky, "Understanding
Neural Networks through Representation Erasure", 2016): a token's score is the drop in the target
logit when it is replaced.
"""

from __future__ import annotations

from typing import Any

import torch

from mlsafety.core import Classifier, InputError, Param, TextBatch
from mlsafety.monitoring.transparency.base import IMAGE, TEXT, Attribution, InputSpace, register, target_logit
from mlsafety.monitoring.transparency.words import special_mask

REPLACEMENTS = ("auto", "mask", "unk", "pad")
"""What replaces an occluded token; ``auto`` takes the tokenizer's mask token, else unk, else pad."""


def replacement_id(tokenizer: Any, replace: str) -> int:
    """The token id that stands in for an occluded token (see :data:`REPLACEMENTS`)."""
    order = ("mask", "unk", "pad") if replace == "auto" else (replace,)
    for kind in order:
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            return int(token_id)
    raise InputError(f"the tokenizer has no {' / '.join(order)} token; pass occlusion replace= one it has")


@register("occlusion", tags=(IMAGE, TEXT))
class Occlusion(Attribution):
    """Drop in the target logit when a square patch (all channels) is replaced by ``baseline``.

    Each pixel gets the mean drop over the patches that cover it (as Captum's ``Occlusion``). When the
    stride does not reach the last row or column, one more patch position flush with that edge is added
    (Captum leaves those pixels uncovered, at 0).
    Needs no gradients: images (N, C, H, W), or text, where each real token (not special tokens,
    not padding) is replaced in turn by the token ``replace`` names and scores the logit's drop.

    Args:
        window: patch side in pixels (clipped to the image size); images only.
        stride: step between patch positions; images only.
        baseline: the value that replaces occluded pixels; images only.
        replace: on text, the token that replaces an occluded one (:data:`REPLACEMENTS`).
        batch_size: occluded copies per forward pass.
    """

    needs_grad = False

    window = Param(2, int, low=1, doc="patch side in pixels")
    stride = Param(1, int, low=1, doc="step between patch positions")
    baseline = Param(0.0, float, doc="value that replaces occluded pixels")
    replace = Param("auto", str, choices=REPLACEMENTS, doc="on text: the token replacing an occluded one")
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

    def _attribute_text(self, clf: Classifier, batch: TextBatch, target: torch.Tensor) -> torch.Tensor:
        ids, mask = batch.input_ids, batch.attention_mask
        stand_in = replacement_id(clf.tokenizer, self.replace)
        rows, cols = (mask.bool() & ~special_mask(clf.tokenizer, ids)).nonzero(as_tuple=True)
        full = target_logit(clf, batch, target)  # type: ignore[arg-type]
        scores = torch.zeros(ids.shape, dtype=full.dtype, device=full.device)
        for start in range(0, rows.numel(), self.batch_size):
            r, c = rows[start : start + self.batch_size], cols[start : start + self.batch_size]
            occluded = ids[r].clone()
            occluded[torch.arange(r.numel(), device=ids.device), c] = stand_in
            copies = TextBatch(occluded, mask[r], batch.truncated[r])
            scores[r, c] = full[r] - target_logit(clf, copies, target[r])  # type: ignore[arg-type]
        return scores

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise InputError(f"occlusion needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        masks = self._masks(h, w, x.device).to(x.dtype)
        p = masks.shape[0]
        full = target_logit(space, x, target)
        drops = torch.empty(n * p, dtype=x.dtype, device=x.device)
        for start in range(0, n * p, self.batch_size):
            flat = torch.arange(start, min(start + self.batch_size, n * p), device=x.device)
            owner, k = flat // p, flat % p
            mk = masks[k]
            occluded = x[owner] * (1 - mk) + self.baseline * mk
            drops[flat] = full[owner] - target_logit(space, occluded, target[owner])
        drop_map = torch.einsum("np,pchw->nchw", drops.view(n, p), masks)
        cover = masks.sum(dim=0, keepdim=True).clamp_min(1)
        return (drop_map / cover).expand_as(x).contiguous()
