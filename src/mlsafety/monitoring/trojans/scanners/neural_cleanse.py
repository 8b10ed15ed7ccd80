"""Neural Cleanse (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks", IEEE S&P 2019).

For every class k, find the smallest mask ``m`` and pattern ``p`` that send clean inputs to k:

    min_{m, p}  CE(f((1 - m) * x + m * p), k) + lambda_k * |m|_1

with ``m = tanh(a) / 2 + 1/2`` and ``p = tanh(b) / 2 + 1/2`` so both stay in [0, 1] (the input
range of every model here: no intensity range to misconfigure). ``lambda_k`` follows the published
cost schedule: it stays 0 until the attack succeeds (>= ``success`` of a batch) for ``patience``
epochs, then starts at ``init_cost`` and is multiplied by 1.5 after ``patience`` successful epochs
and divided by 1.5 ** 1.5 after ``patience`` failing ones. The smallest successful mask of each
class is kept. All classes are optimised at once, as one batch of K x B inputs, on the model's
device.

A trojan's target needs a much smaller mask than the other classes. With the L1 norms
``n_k``, the anomaly index is ``(median(n) - n_k) / (1.4826 * MAD(n))`` (positive below the median);
a class is flagged when its index exceeds ``threshold`` (2 in the paper, a ~95% two-sided
confidence under normality). The model-level score is the largest index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, InputError, Param, rand_like
from mlsafety.metrics import median
from mlsafety.monitoring.trojans.scanners._base import (
    ScanData,
    Scanner,
    SeedScan,
    Trigger,
    register_scanner,
    sample_batch,
)

MAD_CONSISTENCY = 1.4826
"""Scales the median absolute deviation to the standard deviation of a normal distribution."""


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """Signed MAD anomaly index of each value: ``(median - n_k) / (1.4826 * MAD)``; positive below the median."""
    med = median(norms)
    mad = median((norms - med).abs()) * MAD_CONSISTENCY
    return (med - norms) / mad.clamp_min(1e-12)


def reverse_engineer(
    clf: Classifier,
    x: torch.Tensor,
    classes: Sequence[int],
    g: torch.Generator,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    epoch_steps: int = 5,
    patience: int = 5,
    success: float = 0.99,
) -> list[Trigger]:
    """The smallest trigger (mask, pattern) found for each class in ``classes``, optimised jointly.

    Args:
        clf: the model (frozen by the caller).
        x: clean inputs (N, C, H, W) in [0, 1] on the model's device.
        classes: target classes to reverse-engineer.
        g: generator for the initial pattern and the mini-batches.
        steps: optimisation steps (Adam, betas (0.5, 0.9) as in the reference code).
        batch_size: clean inputs per class and step.
        lr: Adam's learning rate on the tanh parameters.
        init_cost: the first non-zero L1 weight.
        epoch_steps: steps per schedule "epoch".
        patience: epochs before the cost changes.
        success: attack success a mask must reach on a batch to count.
    """
    k = len(classes)
    c, h, w = x.shape[1:]
    device = x.device
    target = torch.as_tensor(list(classes), device=device)
    mask_init = rand_like(torch.empty(k, 1, h, w, device=device), g) * 0.2 + 0.4  # a mask near 1/2 everywhere
    a = torch.atanh((mask_init - 0.5) * 2 * 0.999).requires_grad_(True)
    b = torch.atanh((rand_like(torch.empty(k, c, h, w, device=device), g) - 0.5) * 2 * 0.999).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr, betas=(0.5, 0.9))
    cost = torch.zeros(k, device=device)
    set_count = torch.zeros(k, dtype=torch.long, device=device)
    up = torch.zeros(k, dtype=torch.long, device=device)
    down = torch.zeros(k, dtype=torch.long, device=device)
    best_l1 = torch.full((k,), float("inf"), device=device)
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pattern = torch.zeros(k, c, h, w, device=device)
    acc_sum = torch.zeros(k, device=device)
    l1_sum = torch.zeros(k, device=device)
    labels = target.repeat_interleave(batch_size)
    for step in range(steps):
        xb = sample_batch(x, batch_size, g)
        mask = torch.tanh(a) / 2 + 0.5
        pattern = torch.tanh(b) / 2 + 0.5
        adv = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]  # (K, B, C, H, W)
        logits = clf.logits(adv.reshape(k * batch_size, c, h, w))
        ce = F.cross_entropy(logits, labels, reduction="none").reshape(k, batch_size).mean(dim=1)
        l1 = mask.reshape(k, -1).sum(dim=1)
        loss = (ce + cost * l1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc_sum += (logits.argmax(dim=1) == labels).reshape(k, batch_size).float().mean(dim=1)
            l1_sum += l1
            if (step + 1) % epoch_steps:
                continue
            acc, l1_epoch = acc_sum / epoch_steps, l1_sum / epoch_steps
            acc_sum.zero_()
            l1_sum.zero_()
            ok = acc >= success
            better = ok & (l1_epoch < best_l1)
            best_l1 = torch.where(better, l1_epoch, best_l1)
            best_mask[better] = mask[better].detach()
            best_pattern[better] = pattern[better].detach()
            # the published schedule, per class
            zero = cost == 0
            set_count = torch.where(zero & ok, set_count + 1, torch.zeros_like(set_count))
            start = zero & (set_count >= patience)
            up = torch.where(~zero & ok, up + 1, torch.zeros_like(up))
            down = torch.where(~zero & ~ok, down + 1, torch.zeros_like(down))
            raise_ = ~zero & (up >= patience)
            lower = ~zero & (down >= patience)
            cost = torch.where(start, torch.full_like(cost, init_cost), cost)
            cost = torch.where(raise_, cost * 1.5, cost)
            cost = torch.where(lower, cost / 1.5**1.5, cost)
            up = torch.where(raise_, torch.zeros_like(up), up)
            down = torch.where(lower, torch.zeros_like(down), down)
    with torch.no_grad():
        final_mask = torch.tanh(a) / 2 + 0.5
        final_pattern = torch.tanh(b) / 2 + 0.5
        never = torch.isinf(best_l1)
        best_mask[never] = final_mask[never]
        best_pattern[never] = final_pattern[never]
    return [
        Trigger(best_mask[i].detach().clone(), best_pattern[i].detach().clone(), int(cls), "neural-cleanse")
        for i, cls in enumerate(classes)
    ]


@register_scanner("neural-cleanse", tags=("mad-score",))
class NeuralCleanse(Scanner):
    """Trigger reverse-engineering for every class and a MAD outlier test on the mask norms.

    Score: the largest anomaly index (higher = more likely trojaned); verdict: score >
    ``threshold``. ``per_class`` holds each class's anomaly index; ``triggers`` the recovered
    trigger of every class; ``extra`` the L1 norm of each class's mask (``l1_class_<k>``). The
    optimisation settings are those of :func:`reverse_engineer`.
    """

    threshold = Param(2.0, float, doc="anomaly index above which a class (and so the model) is flagged")
    steps = Param(200, int, low=1, doc="optimisation steps (Adam, betas (0.5, 0.9) as in the reference code)")
    batch_size = Param(16, int, low=1, doc="clean inputs per class and step")
    lr = Param(0.1, float, low=0, low_open=True, doc="Adam's learning rate on the tanh parameters")
    init_cost = Param(1e-3, float, low=0, low_open=True, doc="the first non-zero L1 weight")
    epoch_steps = Param(5, int, low=1, doc="steps per schedule epoch")
    patience = Param(5, int, low=1, doc="epochs before the cost changes")
    success = Param(0.99, float, low=0, high=1, doc="attack success a mask must reach on a batch to count")
    max_inputs = Param(512, int, low=1, doc="clean inputs used (a random subset when there are more)")

    def __post_init__(self) -> None:
        if self.steps < self.epoch_steps:
            raise InputError(f"neural-cleanse steps must be >= epoch_steps ({self.epoch_steps}), got {self.steps}")

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        x = data.clean.x
        if x.shape[0] > self.max_inputs:
            x = x[torch.randperm(x.shape[0], generator=g)[: self.max_inputs]]
        x = x.to(clf.device)
        classes = list(range(clf.num_classes))
        settings = {k: v for k, v in self.get_params().items() if k not in ("seeds", "threshold", "max_inputs")}
        triggers = reverse_engineer(clf, x, classes, g, **settings)
        norms = torch.tensor([t.l1 for t in triggers])
        index = anomaly_index(norms)
        flagged = [int(k) for k in index.argsort(descending=True).tolist() if float(index[k]) > self.threshold]
        return SeedScan(
            score=float(index.max()),
            targets=flagged,
            per_class=index,
            triggers={t.target: t for t in triggers},
            extra={f"l1_class_{t.target}": t.l1 for t in triggers},
        )
