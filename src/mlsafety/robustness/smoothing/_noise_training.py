"""Gaussian-noise training of base models for randomized smoothing (Cohen et al. 2019, Section 4).

A smoothed classifier is only as good as its base model is under the noise it is smoothed with, so
the base model is trained on inputs corrupted by the same ``N(0, sigma^2)`` noise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsafety.core import BatchHook, DataLike, Progress, TrainConfig, randn_like, random_shift, train


def gaussian_augment(sigma: float, base: BatchHook | None = None) -> BatchHook:
    """A batch hook ``(x, g) -> base(x, g) + N(0, sigma^2)`` for training a base model under noise.

    Cohen et al. train with the same noise they certify with (no clipping to [0, 1]).
    """

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if base is not None:
            x = base(x, g)
        return x + randn_like(x, g) * sigma

    return augment


def train_noisy_classifier(
    model: nn.Module,
    data: DataLike,
    sigma: float,
    epochs: int = 40,
    seed: int = 0,
    progress: Progress | None = None,
    **settings: Any,
) -> nn.Module:
    """Gaussian-noise training (Cohen et al. 2019, Section 4): the one training loop
    (:func:`mlsafety.core.train`) with inputs shifted by up to a pixel (:func:`mlsafety.core.random_shift`)
    and then corrupted by ``N(0, sigma^2)`` (:func:`gaussian_augment`); returns the model in eval mode.

    Args:
        model: the base classifier, trained in place.
        data: labelled training data in any form of :data:`mlsafety.core.DataLike`.
        sigma: the noise's standard deviation, the one the model will be smoothed with.
        epochs: passes over the data.
        seed: the recipe's seed (batch order, shifts, noise and dropout).
        progress: progress display over epochs.
        **settings: other :class:`mlsafety.core.TrainConfig` settings (``lr``, ``batch_size``, ...).
    """
    config = TrainConfig(epochs=epochs, seed=seed, augment=gaussian_augment(sigma, random_shift))
    return train(model, data, config, progress=progress, **settings)
