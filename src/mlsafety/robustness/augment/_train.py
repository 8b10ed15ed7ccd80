"""A training recipe that trains a classifier with an augmentation's loss.

The loop is :func:`mlsafety.core.train` (Adam, cosine schedule, seeded batches, dropout under a
forked seeded global generator, optionally the zoo recipe's one-pixel random shifts), with the loss
hook replaced by the augmentation's, so a comparison between augmentations changes nothing else.
"""

from __future__ import annotations

from torch import nn

from mlsafety.core import (
    BatchHook,
    DataLike,
    Progress,
    TrainConfig,
    generator,
    random_shift,
    seeded_init,
    train,
)
from mlsafety.robustness.augment.base import Augmentation, create
from mlsafety.zoo import DigitsCNN, load_dataset


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
