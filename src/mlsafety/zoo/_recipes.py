"""The zoo's own training recipe (``digits-cnn``) and the classifier-training shorthand.

Training itself is :func:`mlsafety.core.train`; the recipes of models whose algorithm lives in a
pillar (the BadNets demo, the denoisers) are registered by that pillar under the model's name
(:func:`mlsafety.core.register_recipe`), so the zoo imports no pillar.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import (
    BatchHook,
    DataLike,
    LossFn,
    Progress,
    TrainConfig,
    cross_entropy_loss,
    random_shift,
    register_recipe,
    seeded_init,
    train,
)
from mlsafety.zoo._datasets import load_dataset
from mlsafety.zoo._models import DigitsCNN, DigitsCNNBN, FashionCNN

Augment = BatchHook
"""``(x, generator) -> x'``: a random input transform applied to each training batch (a batch hook)."""

BatchLoss = LossFn
"""``(model, x, y, generator) -> scalar loss`` for one batch already on the model's device (a loss hook)."""


def train_classifier(
    model: nn.Module,
    data: DataLike,
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: Augment | None = random_shift,
    weight_decay: float = 1e-4,
    progress: Progress | None = None,
    batch_loss: BatchLoss = cross_entropy_loss,
    stream: tuple[object, ...] = (),
    description: str = "training",
) -> nn.Module:
    """:func:`mlsafety.core.train` with the zoo recipe's defaults (one-pixel random shifts); eval mode.

    Args:
        model: the classifier; its parameters' device is used.
        data: labelled training data (any :data:`~mlsafety.core.DataLike`).
        epochs, lr, batch_size, weight_decay: the optimiser's settings (Adam, cosine schedule).
        seed: seeds the batch order, ``augment`` and the dropout masks.
        augment: the batch hook, applied on the CPU before the batch moves to the device.
        progress: progress display.
        batch_loss: the loss hook (default: cross-entropy).
        stream: extra names for the loop's generator, ``generator(seed, "train", *stream)``.
        description: label of the progress bar.
    """
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        seed=seed,
        stream=("train", *stream),
        augment=augment,
        description=description,
    )
    return train(model, data, config, loss=batch_loss, progress=progress)


def train_digits_cnn(seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-cnn`` weights (train split only)."""
    model = seeded_init(DigitsCNN(), seed, "digits-cnn")
    return train_classifier(model, load_dataset("digits", "train"), seed=seed, progress=progress)


def train_digits_cnn_bn(seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-cnn-bn`` weights: :func:`train_digits_cnn`'s, on :class:`DigitsCNNBN`."""
    model = seeded_init(DigitsCNNBN(), seed, "digits-cnn-bn")
    return train_classifier(model, load_dataset("digits", "train"), seed=seed, progress=progress)


FASHION_EPOCHS = 15
"""Epochs of the ``fashion-cnn`` recipe."""


def train_fashion_cnn(
    seed: int = 0, progress: Progress | None = None, epochs: int = FASHION_EPOCHS, n_train: int | None = None
) -> nn.Module:
    """The recipe behind the shipped ``fashion-cnn`` weights: :class:`FashionCNN` on the ``train`` split
    of ``fashion-mnist`` (55,000 images), Adam (lr 1e-3, weight decay 1e-4), batch 128, cosine schedule,
    no augmentation.

    Args:
        seed: seeds the initialisation, batch order and dropout.
        progress: progress display over epochs.
        epochs: passes over the data (the shipped weights: the default).
        n_train: train on only the first ``n_train`` images of the split (a quick check of the recipe);
            None: all of them.
    """
    model = seeded_init(FashionCNN(), seed, "fashion-cnn")
    data = load_dataset("fashion-mnist", "train")
    if n_train is not None:
        data = data.subset(torch.arange(min(n_train, len(data))))
    return train_classifier(
        model, data, epochs=epochs, lr=1e-3, batch_size=128, seed=seed, augment=None, progress=progress,
        description="training fashion-cnn",
    )  # fmt: skip


register_recipe("digits-cnn", train_digits_cnn)
register_recipe("digits-cnn-bn", train_digits_cnn_bn)
register_recipe("fashion-cnn", train_fashion_cnn)
