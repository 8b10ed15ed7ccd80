"""Training-time augmentations for robustness: Mixup, CutMix, AugMix (with its Jensen-Shannon loss)
and PixMix (with procedural mixing pictures), usable in any training loop through
``Augmentation.loss(model, x, y, generator)``, and a recipe that trains with each.

Example:
    >>> aug = mlsafety.robustness.augment.create("augmix")
    >>> loss = aug.loss(model, xb, yb, g)
"""

from mlsafety.robustness.augment._ops import OPS
from mlsafety.robustness.augment._train import train_augmented, train_digits_cnn
from mlsafety.robustness.augment.augmix import AugMix, augmix, jsd_loss
from mlsafety.robustness.augment.base import (
    AUGMENTATIONS,
    Augmentation,
    MixedBatch,
    Standard,
    available,
    create,
    register_augmentation,
    soft_cross_entropy,
)
from mlsafety.robustness.augment.cutmix import CutMix, cutmix
from mlsafety.robustness.augment.mixup import Mixup, mixup
from mlsafety.robustness.augment.pixmix import PixMix, fractals, mixing_pictures, patterns, pixmix

__all__ = [
    "AUGMENTATIONS",
    "OPS",
    "AugMix",
    "Augmentation",
    "CutMix",
    "MixedBatch",
    "Mixup",
    "PixMix",
    "Standard",
    "augmix",
    "available",
    "create",
    "cutmix",
    "fractals",
    "jsd_loss",
    "mixing_pictures",
    "mixup",
    "patterns",
    "pixmix",
    "register_augmentation",
    "soft_cross_entropy",
    "train_augmented",
    "train_digits_cnn",
]
