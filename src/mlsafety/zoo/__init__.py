"""The embedded zoo: small models shipped as ``.safetensors`` and datasets made from installed packages."""

from __future__ import annotations

from dataclasses import dataclass

from mlsafety.core import cross_entropy_loss, random_shift, seeded_init
from mlsafety.zoo._datasets import DIGITS_SHAPE, dataset_info, dataset_names, load_dataset, ood_names
from mlsafety.zoo._models import (
    ConvDenoiser,
    DigitsCNN,
    ModelInfo,
    load_model,
    model_info,
    model_names,
    register_model,
    save_weights,
    train_model,
    weights_path,
)
from mlsafety.zoo._recipes import Augment, BatchLoss, train_classifier, train_digits_cnn


@dataclass(frozen=True)
class Entry:
    """One line of :func:`available`."""

    kind: str  # "model" or "dataset"
    name: str
    description: str


def available() -> list[Entry]:
    """Every embedded model and dataset with a one-line description."""
    models = [Entry("model", n, model_info(n).description) for n in model_names()]
    datasets = [Entry("dataset", n, dataset_info(n).description) for n in dataset_names()]
    return models + datasets


__all__ = [
    "DIGITS_SHAPE",
    "Augment",
    "BatchLoss",
    "ConvDenoiser",
    "DigitsCNN",
    "Entry",
    "ModelInfo",
    "available",
    "cross_entropy_loss",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "load_model",
    "model_info",
    "model_names",
    "ood_names",
    "random_shift",
    "register_model",
    "save_weights",
    "seeded_init",
    "train_classifier",
    "train_digits_cnn",
    "train_model",
    "weights_path",
]
