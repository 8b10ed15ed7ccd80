"""Gaussian-noise training of base models for randomized smoothing (Cohen et al. 2019, Section 4).

A smoothed classifier is only as good as its base model is under the noise it is smoothed with, so
the base model is trained on inputs corrupted by the same ``N(0, sigma^2)`` noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlsafety.core import DataLike, as_array_dataset, randn_like


def gaussian_augment(
    sigma: float, base: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augmentation ``(x, g) -> base(x, g) + N(0, sigma^2)`` for training a base model under noise.

    Cohen et al. train with the same noise they certify with (no clipping to [0, 1]).
    """

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if base is not None:
            x = base(x, g)
        return x + randn_like(x, g) * sigma

    return augment


def train_noisy_classifier(
    model: nn.Module, data: DataLike, sigma: float, epochs: int = 40, seed: int = 0, **kwargs: object
) -> nn.Module:
    """Gaussian-noise training (Cohen et al. 2019, Section 4): the shared training loop with inputs
    corrupted by ``N(0, sigma^2)`` (after the loop's usual random shift); returns the model in eval mode.

    ``data`` is labelled training data in any form of :data:`mlsafety.core.DataLike`; ``seed`` is the
    recipe's seed. ``kwargs`` go to :func:`mlsafety.zoo.train_classifier` (``lr``, ``batch_size``,
    ``progress``...).
    """
    from mlsafety.zoo import random_shift, train_classifier

    return train_classifier(
        model,
        as_array_dataset(data, "data"),
        epochs=epochs,
        seed=seed,
        augment=gaussian_augment(sigma, random_shift),
        **kwargs,  # type: ignore[arg-type]
    )
