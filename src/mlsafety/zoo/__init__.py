"""The embedded zoo: small models shipped as ``.safetensors`` and datasets made from installed packages."""

from __future__ import annotations

from dataclasses import dataclass

from mlsafety.core import cross_entropy_loss, random_shift, seeded_init
from mlsafety.zoo import _minilm_mr  # noqa: F401  (registers the minilm-mr model and recipe)
from mlsafety.zoo._assets import (
    ASSETS,
    Asset,
    AssetFile,
    InstallResult,
    asset_dir,
    asset_file,
    asset_info,
    asset_installed,
    asset_root,
    copy_from,
    install_assets,
    install_wordnet,
    load_wordnet,
    nltk_data_dir,
    pip_commands,
    pip_download,
    wordnet_dir,
    wordnet_ready,
)
from mlsafety.zoo._datasets import (
    DIGITS_SHAPE,
    DatasetInfo,
    dataset_info,
    dataset_names,
    load_dataset,
    load_text_dataset,
    ood_names,
    register_dataset,
)
from mlsafety.zoo._fashion import (
    FASHION_CLASSES,
    FASHION_MNIST_FILES,
    check_fashion_mnist,
    fashion_mnist_dir,
    read_fashion_pair,
)
from mlsafety.zoo._idx import read_idx, write_idx
from mlsafety.zoo._models import (
    ConvDenoiser,
    DigitsCNN,
    DigitsCNNBN,
    FashionCNN,
    ModelInfo,
    cache_dir,
    load_model,
    model_info,
    model_names,
    register_model,
    save_weights,
    train_model,
    trained_path,
    weights_path,
)
from mlsafety.zoo._recipes import (
    Augment,
    BatchLoss,
    train_classifier,
    train_digits_cnn,
    train_digits_cnn_bn,
    train_fashion_cnn,
)
from mlsafety.zoo._text import (
    SentenceEncoder,
    convert_smollm2,
    load_language_model,
    read_rated_sentences,
    smollm2_cache_dir,
    smollm2_cache_ready,
)


@dataclass(frozen=True)
class Entry:
    """One line of :func:`available`.

    Attributes:
        kind: ``"model"`` or ``"dataset"``.
        name: the zoo name.
        description: one line.
        modality: ``"image"`` or ``"text"``.
        size: parameters (models) or rows (datasets), as text.
        source: where it comes from (trained or made here, or a registry ``package==version`` and licence).
    """

    kind: str
    name: str
    description: str
    modality: str = "image"
    size: str = ""
    source: str = ""


def available() -> list[Entry]:
    """Every embedded model and dataset with its modality, size, source and a one-line description."""
    models = [
        Entry("model", n, i.description, i.modality, i.size, i.source) for n in model_names() for i in [model_info(n)]
    ]
    datasets = [
        Entry("dataset", n, i.description, i.modality, i.size, i.source)
        for n in dataset_names()
        for i in [dataset_info(n)]
    ]
    return models + datasets


__all__ = [
    "ASSETS",
    "DIGITS_SHAPE",
    "FASHION_CLASSES",
    "FASHION_MNIST_FILES",
    "Asset",
    "AssetFile",
    "Augment",
    "BatchLoss",
    "ConvDenoiser",
    "DatasetInfo",
    "DigitsCNN",
    "DigitsCNNBN",
    "Entry",
    "FashionCNN",
    "InstallResult",
    "ModelInfo",
    "SentenceEncoder",
    "asset_dir",
    "asset_file",
    "asset_info",
    "asset_installed",
    "asset_root",
    "available",
    "cache_dir",
    "check_fashion_mnist",
    "convert_smollm2",
    "copy_from",
    "cross_entropy_loss",
    "dataset_info",
    "dataset_names",
    "fashion_mnist_dir",
    "install_assets",
    "install_wordnet",
    "load_dataset",
    "load_language_model",
    "load_model",
    "load_text_dataset",
    "load_wordnet",
    "model_info",
    "model_names",
    "nltk_data_dir",
    "ood_names",
    "pip_commands",
    "pip_download",
    "random_shift",
    "read_fashion_pair",
    "read_idx",
    "read_rated_sentences",
    "register_dataset",
    "register_model",
    "save_weights",
    "seeded_init",
    "smollm2_cache_dir",
    "smollm2_cache_ready",
    "train_classifier",
    "train_digits_cnn",
    "train_digits_cnn_bn",
    "train_fashion_cnn",
    "train_model",
    "trained_path",
    "weights_path",
    "wordnet_dir",
    "wordnet_ready",
    "write_idx",
]
