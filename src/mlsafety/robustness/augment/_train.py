"""A training recipe that trains a classifier with an augmentation's loss, and the recipe of the zoo's
``fashion-cnn-pixmix``.

The loop is :func:`mlsafety.core.train` (Adam, cosine schedule, seeded batches, dropout under a
forked seeded global generator, optionally the zoo recipe's one-pixel random shifts), with the loss
hook replaced by the augmentation's, so a comparison between augmentations changes nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import (
    BatchHook,
    DataLike,
    Progress,
    TrainConfig,
    generator,
    random_shift,
    register_recipe,
    seeded_init,
    train,
)
from mlsafety.robustness.augment.base import Augmentation, create
from mlsafety.zoo import DigitsCNN, load_dataset, load_model


def train_augmented(
    model: nn.Module,
    data: DataLike,
    augmentation: Augmentation | str = "standard",
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 1e-4,
    base_augment: BatchHook | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with ``augmentation``'s loss; returns the model in eval mode.

    Args:
        model: the classifier (its parameters' device is used).
        data: labelled training data, any form of :data:`mlsafety.core.DataLike`.
        augmentation: an :class:`Augmentation` or a registered name (``standard``, ``mixup``,
            ``cutmix``, ``augmix``, ``pixmix``).
        epochs, lr, batch_size, weight_decay: the optimiser's settings (as the zoo's loop).
        seed: seeds batches, augmentation draws and dropout.
        base_augment: the batch hook, applied before the augmentation (e.g. :func:`mlsafety.core.random_shift`).
        progress: progress display.
    """
    aug = create(augmentation) if isinstance(augmentation, str) else augmentation
    g_aug = generator(seed, "augment", aug.name)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                         augment=base_augment, description=f"training ({aug.name})")  # fmt: skip
    # The augmentation draws from its own generator, the loop's draws the batches and shifts.
    return train(model, data, config, loss=lambda m, x, y, _g: aug.loss(m, x, y, g_aug), progress=progress)


def train_digits_cnn(augmentation: Augmentation | str = "standard", seed: int = 0, epochs: int = 40,
                     progress: Progress | None = None) -> nn.Module:  # fmt: skip
    """The embedded ``digits-cnn`` recipe (same architecture, init, shifts and optimiser) with an augmentation.

    ``standard`` reproduces the zoo's recipe up to the augmentation generator.
    """
    model = seeded_init(DigitsCNN(), seed, "digits-cnn")
    return train_augmented(model, load_dataset("digits", "train"), augmentation, epochs=epochs, seed=seed,
                           base_augment=random_shift, progress=progress)  # fmt: skip


FASHION_PIXMIX_EPOCHS = 5
"""Epochs of the ``fashion-cnn-pixmix`` recipe (fine-tuning the shipped ``fashion-cnn``)."""


def train_fashion_cnn_pixmix(
    seed: int = 0,
    progress: Progress | None = None,
    epochs: int = FASHION_PIXMIX_EPOCHS,
    n_train: int | None = None,
    lr: float = 5e-4,
) -> nn.Module:
    """The recipe behind the shipped ``fashion-cnn-pixmix`` weights: the shipped ``fashion-cnn``
    fine-tuned with the cross-entropy on :class:`PixMix` images, on the 55,000-image ``train`` split
    (Adam, weight decay 1e-4, batch 128, cosine schedule, no other augmentation).

    PixMix (Hendrycks et al., "PixMix: Dreamlike Pictures Comprehensively Improve Safety Measures",
    2022) with this repository's defaults (k = 4 rounds, beta = 3, severity 3). Deviations from the
    paper: its mixing set is a folder of real fractal and feature-visualisation pictures, here 256
    procedurally drawn greyscale pictures (:func:`~mlsafety.robustness.augment.mixing_pictures`:
    IFS fractals and 1/f wave patterns); the paper trains from scratch with SGD and its datasets'
    standard augmentation, here the clean model is fine-tuned for a few epochs with Adam (training
    from scratch for ``fashion-cnn``'s 15 epochs costs more CPU time than this project could spend).

    Args:
        seed: seeds the batch order, dropout and the PixMix draws.
        progress: progress display over epochs.
        epochs: passes over the data (the shipped weights: the default).
        n_train: train on only the first ``n_train`` images of the split (a quick check); None: all.
        lr: Adam's starting learning rate.
    """
    model = load_model("fashion-cnn")
    data = load_dataset("fashion-mnist", "train")
    if n_train is not None:
        data = data.subset(torch.arange(min(n_train, len(data))))
    return train_augmented(model, data, "pixmix", epochs=epochs, lr=lr, batch_size=128, seed=seed, progress=progress)


register_recipe("fashion-cnn-pixmix", train_fashion_cnn_pixmix)
