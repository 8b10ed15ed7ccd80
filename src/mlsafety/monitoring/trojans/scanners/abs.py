"""ABS: Artificial Brain Stimulation (Liu et al., "ABS: Scanning Neural Networks for Back-doors by
Artificial Brain Stimulation", CCS 2019), re-implemented from the paper (the authors ship a binary).

1. Stimulation: on a few clean images, set one channel of an inner feature map to each of
   ``levels`` values in [0, ``max_level`` x the largest activation seen] (every position) and
   watch the logits. A compromised neuron lifts one label above all others for images of every
   other class; its elevation is the smallest margin (target logit minus the best other logit)
   over those images, at the best level. All channels, levels and images run as one batch.
2. Candidates: the ``candidates`` channels with the largest elevation.
3. Reverse engineering: for each candidate, a mask (L1 at most ``mask_budget`` of the image) and
   a pattern that maximise that channel's activation while keeping the others low (plus a
   cross-entropy term towards the label the channel elevated); all candidates optimised at once.
4. REASR: the share of clean images (of other classes) that the recovered trigger sends to one
   label. The model-level score is the best candidate's REASR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import Classifier, InputError, Param, rand_like
from mlsafety.monitoring.trojans.scanners._base import (
    ScanData,
    Scanner,
    SeedScan,
    Trigger,
    class_balanced,
    register_scanner,
    sample_batch,
)


def last_feature_map(clf: Classifier, x: torch.Tensor) -> str:
    """Name of the last submodule whose output is a 4-D feature map (N, C, H, W) for inputs ``x``."""
    seen: list[str] = []
    handles = []
    for name, module in clf.module.named_modules():
        if name and not list(module.children()):

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.ndim == 4:
                    seen.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            clf.logits(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise InputError("abs needs a convolutional feature map; pass layer= naming a module with 4-D output")
    return seen[-1]


def _margins(logits: torch.Tensor) -> torch.Tensor:
    """For logits (..., K): ``logit_t - max_{j != t} logit_j`` for every label t, shape (..., K)."""
    top2 = logits.topk(2, dim=-1).values
    best_other = torch.where(logits >= top2[..., :1], top2[..., 1:2], top2[..., :1])
    return logits - best_other


@register_scanner("abs", tags=("share-score",))
class ABS(Scanner):
    """Neuron stimulation analysis, candidate neurons, trigger reverse-engineering, REASR.

    Score: the largest REASR among candidates (in [0, 1]; higher = more likely trojaned); verdict:
    score > ``threshold``. ``per_class`` holds, per label, the largest elevation any channel
    gives it; ``triggers`` the trigger recovered from the best candidate. ``logit_weight`` weighs a
    cross-entropy term towards the label the candidate elevated (the "logits loss" of the authors'
    later TrojAI release; 0 gives the paper's pure neuron loss).
    """

    threshold = Param(0.9, float, doc="REASR above which the model is flagged")
    layer = Param(None, str, doc="module whose output is stimulated; None: the last 4-D feature map")
    per_class = Param(2, int, low=1, doc="clean images per class used for stimulation")
    levels = Param(8, int, low=2, doc="stimulation values per channel")
    max_level = Param(4.0, float, low=0, low_open=True, doc="largest stimulation, in multiples of the top activation")
    candidates = Param(3, int, low=1, doc="channels reverse-engineered")
    mask_budget = Param(0.15, float, low=0, low_open=True, high=1, doc="largest mask L1, as a share of the pixels")
    steps = Param(150, int, low=1, doc="reverse-engineering steps (Adam)")
    batch_size = Param(32, int, low=1, doc="clean inputs per candidate and step")
    lr = Param(0.1, float, low=0, low_open=True, doc="Adam's learning rate")
    logit_weight = Param(1.0, float, low=0, doc="weight of the cross-entropy towards the elevated label")

    # -- stimulation -------------------------------------------------------------------------
    def _stimulate(self, clf: Classifier, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Elevation (channels, K): per channel and label, the best-level smallest margin over other-class images."""
        feats: list[torch.Tensor] = []
        grab = module.register_forward_hook(lambda _m, _i, out: feats.append(out.detach()))
        try:
            with torch.inference_mode():
                clf.logits(x)
        finally:
            grab.remove()
        ch = feats[0].shape[1]
        top = float(feats[0].amax()) if float(feats[0].amax()) > 0 else 1.0
        values = torch.linspace(0.0, self.max_level * top, self.levels, device=x.device)
        n = x.shape[0]

        def stim(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone().reshape(ch, self.levels, n, *out.shape[1:])
            c_idx = torch.arange(ch, device=out.device)
            out[c_idx, :, :, c_idx] = values.reshape(1, self.levels, 1, 1, 1).expand(ch, -1, n, *out.shape[-2:])
            return out.reshape(ch * self.levels * n, *out.shape[3:])

        handle = module.register_forward_hook(stim)
        try:
            with torch.inference_mode():
                logits = clf.logits(x.repeat(ch * self.levels, 1, 1, 1))
        finally:
            handle.remove()
        margins = _margins(logits.reshape(ch, self.levels, n, -1))  # (ch, L, n, K)
        own = F.one_hot(y, margins.shape[-1]).bool().reshape(1, 1, n, -1)
        margins = margins.masked_fill(own, float("inf"))
        return margins.amin(dim=2).amax(dim=1)  # (ch, K)

    # -- reverse engineering -----------------------------------------------------------------
    def _reverse(
        self,
        clf: Classifier,
        module: nn.Module,
        x: torch.Tensor,
        channels: torch.Tensor,
        labels: torch.Tensor,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(channels)
        c, h, w = x.shape[1:]
        dev = x.device
        budget = self.mask_budget * h * w
        a = torch.atanh(rand_like(torch.empty(k, 1, h, w, device=dev), g) * 0.1 - 0.85).requires_grad_(True)
        b = torch.atanh((rand_like(torch.empty(k, c, h, w, device=dev), g) - 0.5) * 1.998).requires_grad_(True)
        opt = torch.optim.Adam([a, b], lr=self.lr)
        feats: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: feats.append(out))
        try:
            for _ in range(self.steps):
                feats.clear()
                xb = sample_batch(x, self.batch_size, g)
                mask = torch.tanh(a) / 2 + 0.5
                pattern = torch.tanh(b) / 2 + 0.5
                adv = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]
                logits = clf.logits(adv.reshape(k * self.batch_size, c, h, w))
                ce = F.cross_entropy(logits, labels.repeat_interleave(self.batch_size), reduction="none")
                act = feats[-1].reshape(k, self.batch_size, feats[-1].shape[1], -1).amax(dim=3).mean(dim=1)  # (k, ch)
                target_act = act.gather(1, channels[:, None])[:, 0]
                others = (act.sum(dim=1) - target_act) / max(act.shape[1] - 1, 1)
                l1 = mask.reshape(k, -1).sum(dim=1)
                loss = (-target_act + 0.1 * others + 10.0 * F.relu(l1 - budget)).sum()
                loss = loss + self.logit_weight * ce.reshape(k, -1).mean(dim=1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            handle.remove()
        with torch.no_grad():
            mask = torch.tanh(a) / 2 + 0.5
            pattern = torch.tanh(b) / 2 + 0.5
            # enforce the budget exactly: a mask over it is scaled down to L1 = budget (its shape kept)
            scale = (budget / mask.reshape(k, -1).sum(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            mask = mask * scale.reshape(k, 1, 1, 1)
        return mask.detach(), pattern.detach()

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        x_all = data.clean.x.to(clf.device)
        y_all = data.clean.y.to(clf.device)
        layer = self.layer or last_feature_map(clf, x_all)
        modules = dict(clf.module.named_modules())
        if layer not in modules:
            raise InputError(f"abs: model has no module named {layer!r}")
        module = modules[layer]
        few = class_balanced(data.clean, self.per_class, g)
        elevation = self._stimulate(clf, module, few.x.to(clf.device), few.y.to(clf.device))
        best_per_channel, label = elevation.max(dim=1)
        cand = best_per_channel.argsort(descending=True)[: self.candidates]
        mask, pattern = self._reverse(clf, module, x_all, cand, label[cand], g)
        reasr = torch.zeros(len(cand))
        flips = torch.zeros(len(cand), dtype=torch.long)
        with torch.inference_mode():
            for i in range(len(cand)):
                adv = ((1 - mask[i]) * x_all + mask[i] * pattern[i]).clamp(0, 1)
                pred = clf.logits(adv).argmax(dim=1)
                t = int(torch.mode(pred).values)
                other = y_all != t
                flips[i] = t
                reasr[i] = (pred[other] == t).float().mean() if bool(other.any()) else 0.0
        best = int(reasr.argmax())
        score = float(reasr[best])
        target = int(flips[best])
        trig = Trigger(mask[best].cpu(), pattern[best].cpu(), target, "abs")
        return SeedScan(
            score=score,
            targets=[target] if score > self.threshold else [],
            per_class=elevation.amax(dim=0).cpu(),
            triggers={target: trig},
            extra={"best_channel": float(cand[best]), "stimulation_label": float(label[cand[best]])},
        )
