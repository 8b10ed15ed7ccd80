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
