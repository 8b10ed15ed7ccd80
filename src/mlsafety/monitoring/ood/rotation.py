"""Rotation prediction (Hendrycks, Mazeika, Kadavath & Song, "Using Self-Supervised Learning Can Improve
Model Robustness and Uncertainty", NeurIPS 2019): an auxiliary head on the classifier's features predicts
which of four rotations (0, 90, 180, 270 degrees) was applied to the input; inputs whose rotations the
head cannot tell apart are anomalous.

Anomaly score = the rotation loss summed over the four rotations, ``sum_r CE(h(f(rot_r x)), r)`` (the
paper's self-supervised score), optionally plus ``kl_weight`` times the negated KL divergence from the
uniform distribution to the classifier's softmax on ``x`` (the divergence is large on confident,
in-distribution inputs, hence the sign). Their combined multi-class score, ``KL(U || p) - (1/4) sum_r CE_r``
(a confidence; the rotation loss averaged over the four turns), is this score at ``kl_weight = 4`` times
``-1/4``, so the two rank inputs alike.

Deviations from the paper, stated:

* By default the head is trained on the *frozen* classifier (its penultimate features of the four
  rotations of the fit data), so fitting is fast and the classifier is untouched; the paper trains
  the backbone jointly with the rotation loss. :func:`mlsafety.monitoring.training.rotation_training`
  is that recipe (optionally with outlier exposure); :meth:`Rotation.from_head` scores with its head
  and its fine-tuned model.
* The head is linear (as the paper's) on standardised features, or a one-hidden-layer MLP
  (``hidden > 0``), trained with Adam on at most ``fit_samples`` seeded fit inputs.
* Images must be square (a quarter turn of an ``H x W`` image with ``H != W`` changes its shape).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import Classifier, InputError, ModelLike, Param, check_images, frozen, generator, seeded_init
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, register

ROTATIONS = 4
"""Quarter turns the head tells apart: 0, 90, 180 and 270 degrees."""


def rotate_all(x: torch.Tensor) -> torch.Tensor:
    """The four rotations of ``x`` (N, C, H, W) stacked along a new first dimension: (4, N, C, H, W)."""
    if x.shape[-1] != x.shape[-2]:
        raise InputError(f"rotation needs square images (H == W), got {x.shape[-2]}x{x.shape[-1]}")
    return torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(ROTATIONS)])


def rotation_features(clf: Classifier, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features of the four rotations of ``x`` (4, N, D) and the logits of ``x`` itself (N, K),
    in eval mode without gradients (one forward pass per rotation and batch)."""
    check_images(x)
    feats, logits = [], []
    device = clf.device
    with frozen(clf.module), torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            rot = rotate_all(x[start : start + batch_size].to(device))
            f, lg = clf.features_and_logits(rot.flatten(0, 1))
            feats.append(f.reshape(ROTATIONS, rot.shape[1], -1).float())
            logits.append(lg.reshape(ROTATIONS, rot.shape[1], -1)[0].float())
    if not feats:
        raise InputError("rotation needs at least one input")
    return torch.cat(feats, dim=1), torch.cat(logits)


def rotation_head(width: int, hidden: int = 0) -> nn.Module:
    """A fresh rotation head on features of ``width``: linear, or one hidden ReLU layer of ``hidden`` units."""
    if hidden > 0:
        return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, ROTATIONS))
    return nn.Linear(width, ROTATIONS)


def rotation_loss(head: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Per-input rotation loss summed over the rotations, ``sum_r CE(head(feats[r]), r)``: (N,) from (4, N, D)."""
    logits = head(feats.flatten(0, 1))
    target = torch.arange(ROTATIONS, device=feats.device).repeat_interleave(feats.shape[1])
    return F.cross_entropy(logits, target, reduction="none").reshape(ROTATIONS, -1).sum(dim=0)


def kl_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """``KL(U || softmax(logits))`` per input (N,): ``-log K - mean_k log p_k``."""
    return -torch.log(torch.tensor(float(logits.shape[1]))) - logits.log_softmax(dim=1).mean(dim=1)


class _Standardize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std


def train_rotation_head(
    feats: torch.Tensor,
    hidden: int = 0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """A rotation head trained on fixed features ``feats`` (4, N, D) of the four rotations (Adam, seeded
    init and batch order); it standardises its input with the features' mean and spread. In eval mode."""
    flat = feats.flatten(0, 1).detach()
    std = flat.std(dim=0).clamp_min(1e-6) if flat.shape[0] > 1 else torch.ones_like(flat[0])
    head: nn.Module = nn.Sequential(_Standardize(flat.mean(dim=0), std), rotation_head(flat.shape[1], hidden))
    head = seeded_init(head, seed, "rotation-head").to(flat.device)
    target = torch.arange(ROTATIONS, device=flat.device).repeat_interleave(feats.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = generator(seed, "rotation-head", "batches")
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(flat.shape[0], generator=g).to(flat.device)
            for start in range(0, flat.shape[0], batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(head(flat[idx]), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


@register("rotation", tags=(IMAGE, OPT_IN))
class Rotation(Detector):
    """Anomaly score = rotation-prediction loss summed over the four quarter turns (+ ``kl_weight`` x the
    negated KL divergence from uniform of the softmax; ``kl_weight = 4`` ranks as the paper's combined score).

    ``fit`` trains the head on the frozen model's features of the four rotations of the fit data
    (no labels needed); :meth:`from_head` takes a head trained elsewhere (e.g. by
    :func:`mlsafety.monitoring.training.rotation_training`). Four forward passes per input.

    Args:
        hidden: hidden units of the head trained in ``fit`` (0: linear, as in the paper).
        epochs: passes of the head's training over the rotated fit features.
        lr: Adam learning rate of the head.
        fit_samples: fit inputs used (a seeded subset; 0: all).
        kl_weight: weight of the negated KL-from-uniform term (0: rotation loss only; 4: the paper's combined
            score, whose rotation loss is the mean over the four turns, not the sum).
        seed: seed of the head's initialisation, batch order and fit subset.
    """

    needs = frozenset({"multi-pass"})
    requires_fit = True

    hidden = Param(0, int, low=0, doc="hidden units of the head trained in fit (0: linear)")
    epochs = Param(30, int, low=1, doc="passes of the head's training")
    lr = Param(1e-2, float, low=0, low_open=True, doc="Adam learning rate of the head")
    fit_samples = Param(4096, int, low=0, doc="fit inputs used (seeded subset; 0: all)")
    kl_weight = Param(0.0, float, low=0, doc="weight of the negated KL(uniform || softmax) term")
    seed = Param(0, int, doc="seed of the head's training")

    @classmethod
    def from_head(cls, head: nn.Module, **params: Any) -> Rotation:
        """A fitted detector that scores with a rotation ``head`` trained elsewhere on the model's raw
        penultimate features (e.g. by :func:`mlsafety.monitoring.training.rotation_training`)."""
        det = cls(**params)
        det.head_ = head.eval()
        det.fitted_ = True
        return det

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        """Why quarter turns cannot be applied to the model's inputs (one line), so the audit skips it."""
        if probe.dim() != 4 or probe.shape[-2] != probe.shape[-1]:
            return f"rotation needs square images (N, C, H, W with H == W), got {tuple(probe.shape)}"
        return None

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if 0 < self.fit_samples < x.shape[0]:
            pick = torch.randperm(x.shape[0], generator=generator(self.seed, "rotation", "fit-subset"))
            x = x[pick[: self.fit_samples].sort().values]
        feats, _ = rotation_features(clf, x)
        self.head_ = train_rotation_head(feats, self.hidden, self.epochs, self.lr, seed=self.seed)

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        feats, logits = rotation_features(clf, x, batch_size)
        head = self.head_
        with frozen(head), torch.inference_mode():
            head = head.to(feats.device)
            score = rotation_loss(head, feats)
            if self.kl_weight:
                score = score - self.kl_weight * kl_from_uniform(logits)
        return score
