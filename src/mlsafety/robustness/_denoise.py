"""Training a denoiser for denoised smoothing, and the recipes of the zoo's digits denoisers.

Denoised smoothing (Salman et al., "Denoised Smoothing: A Provable Defense for Pretrained
Classifiers", 2020) puts a denoiser ``D`` in front of an off-the-shelf classifier ``f`` and
certifies ``f(D(x + e))``. Any module that maps noisy inputs to clean ones plugs into
``SmoothedClassifier(denoiser=...)``; a diffusion model's one-shot denoise (Carlini et al. 2023)
is one such module. The zoo's :class:`~mlsafety.zoo.ConvDenoiser` is a tiny convolutional one for
the embedded data; :func:`train_denoiser` trains any of them with the mean-squared error between
``D(x + e)`` and ``x`` on the shared loop (:func:`mlsafety.core.train`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    DataLike,
    InputError,
    Progress,
    TrainConfig,
    as_array_dataset,
    randn_like,
    register_recipe,
    seeded_init,
    train,
)
from mlsafety.zoo import ConvDenoiser, load_dataset


def train_denoiser(
    denoiser: nn.Module,
    data: DataLike,
    sigma: float,
    epochs: int = 60,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``denoiser`` to map ``x + N(0, sigma^2)`` back to ``x`` (MSE, Adam, cosine schedule), seeded.

    ``data`` is any :data:`~mlsafety.core.DataLike` (its labels, if any, are not used). Returns the
    denoiser in eval mode.
    """
    data = as_array_dataset(data, "data", labelled=False)
    if len(data) == 0:
        raise InputError("cannot train a denoiser on an empty dataset")
    if not sigma > 0:
        raise InputError(f"sigma must be positive, got {sigma}")

    def mse_to_clean(model: nn.Module, x: torch.Tensor, _y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noisy = x + randn_like(x, g) * sigma
        return F.mse_loss(model(noisy), x)

    # No dropout in a denoiser: no seed drawn for the global generator (seed_dropout=False).
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0, seed=seed,
                         stream=("denoiser", sigma), seed_dropout=False, description="training denoiser")  # fmt: skip
    return train(denoiser, data, config, loss=mse_to_clean, progress=progress)


def train_digits_denoiser(sigma: float, seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-denoiser-<100 sigma>`` weights: a :class:`~mlsafety.zoo.ConvDenoiser`
    trained on the digits train split for one noise level (deterministic on the CPU)."""
    model = seeded_init(ConvDenoiser(), seed, "digits-denoiser", sigma)
    return train_denoiser(model, load_dataset("digits", "train"), sigma, epochs=30, seed=seed, progress=progress)


def _digits_denoiser_recipe(percent: int) -> Callable[..., nn.Module]:
    """The zoo recipe of ``digits-denoiser-<percent>``."""

    def recipe(seed: int = 0, progress: Progress | None = None) -> nn.Module:
        return train_digits_denoiser(percent / 100, seed=seed, progress=progress)

    return recipe


for _percent in (25, 50):
    register_recipe(f"digits-denoiser-{_percent}", _digits_denoiser_recipe(_percent))

__all__ = ["ConvDenoiser", "train_denoiser", "train_digits_denoiser"]
