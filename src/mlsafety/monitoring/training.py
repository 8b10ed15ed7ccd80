"""Outlier exposure (Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure",
ICLR 2019): fine-tune a classifier so that it is uniformly unsure on auxiliary outliers.

For the embedded data, :func:`outlier_set` makes the auxiliary outliers from the training digits
themselves (pixel permutations, noise blends, quadrant mosaics; see
:func:`~mlsafety.core.permute_noise_mosaic_outliers`): no OOD test set (letters, photo patches,
noise/blobs) and none of their generators is used, so the evaluation stays honest.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    DataLike,
    InputError,
    ModelLike,
    Progress,
    TrainConfig,
    as_array_dataset,
    check_images,
    generator,
    permute_noise_mosaic_outliers,
    seeded_init,
    train,
)


def outlier_set(data: ArrayDataset, seed: int = 0, copies: int = 1) -> ArrayDataset:
    """Auxiliary outliers made from in-distribution ``data`` (``copies`` x its size), labels ``-1``."""
    if copies < 1:
        raise InputError(f"copies must be at least 1, got {copies}")
    g = generator(seed, "outlier-exposure", data.name)
    x = torch.cat([permute_noise_mosaic_outliers(data.x, g) for _ in range(copies)])
    return ArrayDataset(x, torch.full((x.shape[0],), -1), name=f"{data.name}-outliers", kind="far",
                        description=f"synthetic outliers made from {data.name}")  # fmt: skip


def outlier_exposure(
    model: ModelLike,
    data: DataLike,
    outliers: ArrayDataset | torch.Tensor,
    epochs: int = 10,
    lr: float = 5e-4,
    weight: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
) -> nn.Module:
    """A fine-tuned copy of ``model`` trained with the outlier-exposure loss; ``model`` is unchanged.

    The loss is ``CE(f(x), y) + weight * CE(f(x_out), uniform)`` where the second term is the
    cross-entropy between the uniform distribution and the softmax on outliers (the paper's
    classification variant), with Adam at a constant learning rate on the shared loop
    (:func:`mlsafety.core.train`; the outliers are drawn in the loss hook). Each step draws twice
    as many outliers as inliers (the paper's ratio). Dropout draws from a forked global RNG seeded
    from ``seed``.

    Args:
        model: the classifier to fine-tune (a copy is made).
        data: labelled in-distribution training data (any :data:`~mlsafety.core.DataLike`).
        outliers: auxiliary outlier images (never the OOD sets used for evaluation).
        epochs: passes over ``data``.
        lr: Adam learning rate.
        weight: ``lambda``, the weight of the outlier term (paper default).
        batch_size: inliers per step.
        seed: seed of the shuffling and the dropout masks.
        progress: progress display.

    Returns:
        The fine-tuned copy in eval mode.
    """
    module = model.module if isinstance(model, Classifier) else model
    out_x = outliers.x if isinstance(outliers, ArrayDataset) else outliers
    check_images(out_x, "outliers")
    data = as_array_dataset(data, "data")
    if len(data) == 0:
        raise InputError("outlier exposure needs in-distribution training data")
    tuned = copy.deepcopy(module)
    for p in tuned.parameters():
        p.requires_grad_(True)
    m = out_x.shape[0]

    def oe_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        oidx = torch.randint(0, m, (2 * len(x),), generator=g)  # twice as many outliers as inliers
        logits = net(torch.cat([x, out_x[oidx].to(x.device)]))
        k = len(x)
        loss_in = F.cross_entropy(logits[:k], y)
        loss_out = -logits[k:].log_softmax(dim=1).mean(dim=1).mean()
        return loss_in + weight * loss_out

    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0, schedule="constant",
                         seed=seed, stream=("outlier-exposure",), description="outlier exposure")  # fmt: skip
    return train(tuned, data, config, loss=oe_loss, progress=progress)


class _RotationNet(nn.Module):
    """The classifier and a rotation head trained together; a frozen backbone stays in eval mode."""

    def __init__(self, net: nn.Module, head: nn.Module, fine_tune: bool) -> None:
        super().__init__()
        self.net, self.head, self.fine_tune = net, head, fine_tune

    def train(self, mode: bool = True) -> _RotationNet:
        super().train(mode)
        if not self.fine_tune:
            self.net.eval()  # head only: batch-norm statistics and dropout of the backbone stay as trained
        return self


def rotation_training(
    model: ModelLike,
    data: DataLike,
    outliers: ArrayDataset | torch.Tensor | None = None,
    fine_tune: bool = False,
    epochs: int = 5,
    lr: float = 1e-3,
    rotation_weight: float = 0.5,
    oe_weight: float = 0.5,
    hidden: int = 0,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Train a rotation-prediction head (Hendrycks, Mazeika, Kadavath & Song, "Using Self-Supervised
    Learning Can Improve Model Robustness and Uncertainty", NeurIPS 2019), optionally with the classifier
    and with outlier exposure; ``model`` is unchanged.

    Each step rotates the batch by 0, 90, 180 and 270 degrees and adds ``rotation_weight`` times the
    rotation cross-entropy of the head on the penultimate features (the paper's lambda = 0.5):

    * ``fine_tune=False`` (default): only the head learns, on a copy of the frozen classifier kept in
      eval mode; with ``outliers``, ``oe_weight`` times the cross-entropy between the uniform
      distribution and the head's rotation prediction on rotated outliers (the head learns to be unsure
      of outliers' rotations: outlier exposure applied to the self-supervised head).
    * ``fine_tune=True``: the classifier learns too, with its cross-entropy on the unrotated inputs; with
      ``outliers``, the outlier-exposure term of :func:`outlier_exposure` on its logits (the paper's
      combination of the two).

    Adam at a constant learning rate on the shared loop (:func:`mlsafety.core.train`); the head
    standardises its input with the mean and spread of the starting model's features on the first
    (up to) 256 training inputs. Use the result with
    :meth:`mlsafety.monitoring.ood.Rotation.from_head` and the returned model.

    Args:
        model: the classifier (a copy is trained).
        data: labelled in-distribution training data (labels are used only when ``fine_tune``).
        outliers: auxiliary outlier images (never the OOD sets used for evaluation), or None.
        fine_tune: train the classifier too (else the head only).
        epochs: passes over ``data``.
        lr: Adam learning rate.
        rotation_weight: weight of the rotation loss.
        oe_weight: weight of the outlier term (with ``outliers``).
        hidden: hidden units of the head (0: linear, as in the paper).
        batch_size: inliers per step.
        seed: seed of the head's initialisation, shuffling, outlier draws and dropout.
        progress: progress display.

    Returns:
        ``(model, head)``: the (fine-tuned or copied) classifier and the head, both in eval mode.
    """
    from mlsafety.monitoring.ood.rotation import ROTATIONS, _Standardize, rotate_all, rotation_features, rotation_head

    module = model.module if isinstance(model, Classifier) else model
    data = as_array_dataset(data, "data")
    if len(data) == 0:
        raise InputError("rotation training needs in-distribution training data")
    out_x = None
    if outliers is not None:
        out_x = outliers.x if isinstance(outliers, ArrayDataset) else outliers
        check_images(out_x, "outliers")
    net = copy.deepcopy(module)
    for p in net.parameters():
        p.requires_grad_(fine_tune)
    clf = Classifier(net)
    probe, _ = rotation_features(clf, data.x[:256])
    flat = probe.flatten(0, 1)
    std = flat.std(dim=0).clamp_min(1e-6) if flat.shape[0] > 1 else torch.ones_like(flat[0])
    head = seeded_init(
        nn.Sequential(_Standardize(flat.mean(dim=0), std), rotation_head(flat.shape[1], hidden)), seed, "rotation-head"
    ).to(clf.device)
    both = _RotationNet(net, head, fine_tune)

    def rot_loss(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-rotation head logits (4N, 4) and the classifier's logits of all rotations (4N, K)."""
        feats, logits = clf.features_and_logits(rotate_all(x).flatten(0, 1), train=True)
        return head(feats), logits

    def loss(_net: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        target = torch.arange(ROTATIONS, device=x.device).repeat_interleave(n)
        rot_logits, logits = rot_loss(x)
        total = rotation_weight * F.cross_entropy(rot_logits, target)
        if fine_tune:
            total = total + F.cross_entropy(logits[:n], y)
        if out_x is not None:
            oidx = torch.randint(0, out_x.shape[0], (2 * n,), generator=g)
            xo = out_x[oidx].to(x.device)
            if fine_tune:
                out_logits = clf.logits(xo)
            else:
                out_logits, _ = rot_loss(xo)
            total = total + oe_weight * (-out_logits.log_softmax(dim=1).mean(dim=1).mean())
        return total

    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0, schedule="constant",
                         seed=seed, stream=("rotation-training",), description="rotation training")  # fmt: skip
    train(both, data, config, loss=loss, progress=progress)
    for p in net.parameters():
        p.requires_grad_(True)
    for p in head.parameters():
        p.requires_grad_(False)
    return net.eval(), head.eval()
