"""Embedded models: architectures, their shipped ``.safetensors`` weights and the names of their recipes.

``digits-cnn``
    a small CNN for the ``digits`` data (two 3x3 convolutions, max-pooling, a 128-unit hidden
    layer with dropout and a linear head), with its input normalisation built in. Trained by
    :func:`~mlsafety.zoo.train_digits_cnn` (Adam, 40 epochs, one-pixel random shifts, seed 0), deterministic
    on the CPU. ``mlsafety zoo train digits-cnn`` reproduces the shipped file bit for bit only on
    the kind of CPU that trained it (float sums depend on the CPU's kernels; ``bench/reproduce.py``
    records where it holds); on any other its model agrees with the shipped one on at least 99%
    of the test set (``tests/zoo/test_zoo.py``).
``digits-cnn-bn``
    :class:`DigitsCNNBN`, the same CNN with batch normalisation after each convolution (so test-time
    adaptation methods have normalisation layers to adapt), trained by the same recipe
    (:func:`~mlsafety.zoo.train_digits_cnn_bn`).
``digits-cnn-bn-at``
    :class:`DigitsCNNBN` adversarially trained from scratch (Madry PGD, Linf eps 0.1); its recipe is
    owned by :mod:`mlsafety.robustness` (``train_digits_cnn_bn_at`` in ``robustness/training.py``).
``fashion-cnn``
    :class:`FashionCNN` on Fashion-MNIST (three 3x3 convolution blocks with batch normalisation and
    max-pooling, a 128-unit hidden layer with dropout, a linear head), trained by
    :func:`~mlsafety.zoo.train_fashion_cnn` (Adam, cosine schedule, no augmentation, one CPU thread, seed 0) on
    the 55,000-image ``train`` split. A re-run on another CPU gives other weights (float sums differ);
    ``bench/fashion.py`` measures how far its test accuracy and predictions move.
``fashion-cnn-pixmix``, ``fashion-cnn-at``
    the shipped ``fashion-cnn`` fine-tuned (one CPU thread, seed 0): 5 epochs on PixMix images
    (Hendrycks et al., 2022; procedural mixing pictures) and 4 epochs of fast adversarial training
    (FGSM from a random start, Wong et al., 2020; Linf eps 0.1, the epoch with the best held-out
    PGD accuracy kept), so ``mlsafety compare`` has real models to set against ``fashion-cnn``.
    Their recipes are owned by :mod:`mlsafety.robustness` (``augment/_train.py``, ``training.py``);
    ``bench/fashion_variants.py`` measures the three side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlsafety.core import InputError, Normalize, Progress, UnknownNameError, training_recipe

WEIGHTS_DIR = Path(__file__).parent / "weights"


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 inputs in [0, 1] (the normalisation is the first layer).

    Args:
        num_classes: outputs of the head.
        width: feature maps of the second convolution (the first has half).
        dropout: dropout before the head.
        batch_norm: put ``nn.BatchNorm2d`` after each convolution (before its ReLU); see :class:`DigitsCNNBN`.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.25, batch_norm: bool = False) -> None:
        super().__init__()
        self.normalize = Normalize(0.30, 0.38)

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.ReLU()]

        self.features = nn.Sequential(*conv(1, width // 2), *conv(width // 2, width), nn.MaxPool2d(2))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 128), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(self.normalize(x))))


class DigitsCNNBN(DigitsCNN):
    """:class:`DigitsCNN` with ``nn.BatchNorm2d`` after each convolution (before its ReLU).

    The image zoo's model with normalisation layers, for test-time adaptation (TeBN, TENT, ...) and
    the attacks on it (Wu et al., "Uncovering Adversarial Risks of Test-Time Adaptation", 2023).
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.25) -> None:
        super().__init__(num_classes, width, dropout, batch_norm=True)


class FashionCNN(nn.Module):
    """Small CNN for 1x28x28 inputs in [0, 1] (Fashion-MNIST; the normalisation is the first layer).

    Three blocks of (3x3 convolution, batch normalisation, ReLU, 2x2 max-pooling) take 28x28 to 3x3;
    a hidden layer with dropout gives the 128-d features the feature-based detectors read, and
    ``fc`` is the linear head.

    Args:
        num_classes: outputs of the head.
        widths: feature maps of the three convolutions.
        hidden: units of the hidden layer (the features).
        dropout: dropout before the head.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (32, 64, 128),
        hidden: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(0.286, 0.353)  # Fashion-MNIST's training mean and std

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        a, b, c = widths
        self.features = nn.Sequential(*block(1, a), *block(a, b), *block(b, c))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c * 9, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(self.normalize(x))))


class ConvDenoiser(nn.Module):
    """Residual CNN denoiser: ``x_noisy - r(x_noisy)``, clamped to [0, 1] (for denoised smoothing).

    Args:
        channels: input channels.
        width: feature maps per hidden layer.
        depth: number of hidden 3x3 convolutions.
    """

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.residual(x)).clamp(0, 1)


@dataclass(frozen=True)
class ModelInfo:
    """An embedded model: its architecture, shipped weights and the name of its training recipe.

    Attributes:
        name: the zoo name (also the weights' file stem).
        description: one line for ``mlsafety zoo list``.
        build: the architecture (a zoo class: loading never needs a pillar).
        recipe: the name of its training recipe in :func:`mlsafety.core.training_recipe` (None: no
            recipe); the layer that owns the algorithm registers it.
        dataset: the zoo dataset it was trained on.
        threads: CPU threads the shipped weights were trained with: float sums depend on the thread
            count, so :func:`train_model` trains with exactly this many (bit-identical weights also
            need the same kind of CPU).
        trained_by: the module that registers ``recipe`` (named in the error when it is not imported).
        modality: ``"image"`` or ``"text"`` (a causal LM is ``"text"`` too).
        size: its size for ``mlsafety zoo list`` (parameters).
        source: where its weights come from (trained here, or a registry ``package==version`` and
            its licence).
        load: how :func:`load_model` makes it when the default (``build()`` plus the shipped
            ``weights_path(name)``) does not fit: a model built from installed assets, or one whose
            shipped weights cover only its trained part (an encoder from the assets plus a head
            read from ``weights_path(name)``). It returns the model with its weights.
        role: what it is: ``"classifier"`` (logits), ``"encoder"`` (embeddings), ``"causal-lm"``
            (next-token logits; :func:`mlsafety.zoo.load_language_model` wraps it) or ``"denoiser"``.
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    recipe: str | None
    dataset: str
    threads: int = 1
    trained_by: str = "mlsafety.zoo"
    modality: str = "image"
    size: str = ""
    source: str = "trained here (Apache-2.0)"
    load: Callable[[], nn.Module] | None = None
    role: str = "classifier"


_MODELS: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> None:
    """Add an embedded model."""
    if info.name in _MODELS:
        raise ValueError(f"zoo model {info.name!r} already exists")
    _MODELS[info.name] = info


register_model(
    ModelInfo(
        "digits-cnn",
        "small CNN on digits (2 conv + 2 linear, 72k parameters), Adam 40 epochs",
        DigitsCNN,
        "digits-cnn",
        "digits",
        threads=2,
        size="71.8k params",
    )
)
register_model(
    ModelInfo(
        "digits-cnn-badnets",
        "digits-cnn with a BadNets trojan (3x3 checkerboard bottom-right -> class 7), a demo",
        DigitsCNN,
        "digits-cnn-badnets",
        "digits",
        trained_by="mlsafety.monitoring.trojans",
        size="71.8k params",
    )
)
register_model(
    ModelInfo(
        "digits-cnn-bn",
        "digits-cnn with BatchNorm after each conv (for test-time adaptation), Adam 40 epochs; "
        "test accuracy 0.994 [0.980, 0.999]",
        DigitsCNNBN,
        "digits-cnn-bn",
        "digits",
        size="71.9k params",
    )
)
register_model(
    ModelInfo(
        "digits-cnn-bn-at",
        "digits-cnn-bn adversarially trained (PGD Linf eps 0.1, 7 steps), Adam 40 epochs; test accuracy "
        "0.989 [0.972, 0.997], under PGD-20 eps 0.1 0.844 [0.803, 0.880]",
        DigitsCNNBN,
        "digits-cnn-bn-at",
        "digits",
        trained_by="mlsafety.robustness",
        size="71.9k params",
    )
)
register_model(
    ModelInfo(
        "fashion-cnn",
        "small CNN on Fashion-MNIST (3 conv+BN blocks, 2 linear), Adam 15 epochs, no augmentation; test accuracy "
        "0.927 [0.922, 0.932]",
        FashionCNN,
        "fashion-cnn",
        "fashion-mnist",
        threads=1,
        size="241.8k params",
    )
)
register_model(
    ModelInfo(
        "fashion-cnn-pixmix",
        "fashion-cnn fine-tuned 5 epochs on PixMix images (procedural fractals and patterns); test accuracy "
        "0.926 [0.920, 0.931]",
        FashionCNN,
        "fashion-cnn-pixmix",
        "fashion-mnist",
        threads=1,
        trained_by="mlsafety.robustness",
        size="241.8k params",
    )
)
register_model(
    ModelInfo(
        "fashion-cnn-at",
        "fashion-cnn adversarially fine-tuned 4 epochs (fast AT: FGSM-RS, Linf eps 0.1); test accuracy "
        "0.836 [0.828, 0.843], under PGD-20 eps 0.1 0.625 [0.594, 0.655] (1,000 images)",
        FashionCNN,
        "fashion-cnn-at",
        "fashion-mnist",
        threads=1,
        trained_by="mlsafety.robustness",
        size="241.8k params",
    )
)
for _percent in (25, 50):
    register_model(
        ModelInfo(
            f"digits-denoiser-{_percent}",
            f"denoiser (not a classifier) for digits + N(0, {_percent / 100}^2) noise, for denoised smoothing",
            ConvDenoiser,
            f"digits-denoiser-{_percent}",
            "digits",
            trained_by="mlsafety.robustness",
            size="4.9k params",
            role="denoiser",
        )
    )


def model_names() -> list[str]:
    """The embedded models' names, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The entry of zoo model ``name``; an unknown name raises :class:`~mlsafety.core.UnknownNameError`."""
    if name not in _MODELS:
        raise UnknownNameError(f"unknown zoo model {name!r}; available: {', '.join(model_names())}")
    return _MODELS[name]


def weights_path(name: str) -> Path:
    """Where the shipped weights of zoo model ``name`` live."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def cache_dir() -> Path:
    """The user's mlsafety cache: ``$MLSAFETY_CACHE``, else ``$XDG_CACHE_HOME/mlsafety``, else ``~/.cache/mlsafety``."""
    if os.environ.get("MLSAFETY_CACHE"):
        return Path(os.environ["MLSAFETY_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlsafety"


def trained_path(name: str, seed: int = 0) -> Path:
    """Where :func:`train_model` writes a re-trained zoo model by default (never the shipped file):
    ``<cache>/zoo-trained/<name>-seed<seed>.safetensors``, ``<cache>`` being :func:`cache_dir`."""
    return cache_dir() / "zoo-trained" / f"{name}-seed{seed}.safetensors"


def load_model(name: str) -> nn.Module:
    """An embedded model with its shipped (or installed) weights, in eval mode."""
    from safetensors.torch import load_file

    info = model_info(name)
    if info.load is not None:
        return info.load().eval()
    path = weights_path(name)
    if not path.is_file():
        raise InputError(
            f"weights for {name!r} are missing ({path}); run `mlsafety zoo train {name} --overwrite-shipped`"
        )
    model = info.build()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def save_weights(model: nn.Module, path: Path) -> Path:
    """Write a model's state dict as ``.safetensors`` (contiguous CPU tensors)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def train_model(name: str, out: Path | None = None, seed: int = 0, progress: Progress | None = None) -> Path:
    """Run the recipe of zoo model ``name`` and write its weights to ``out`` (default: :func:`trained_path`,
    in the user's cache; the shipped file is written only when ``out`` is :func:`weights_path` itself).

    The recipe is looked up by name (:func:`mlsafety.core.training_recipe`): a model whose recipe a
    pillar owns needs that pillar imported first (``ModelInfo.trained_by`` names it).
    """
    info = model_info(name)
    if info.recipe is None:
        raise InputError(f"zoo model {name!r} has no training recipe")
    recipe = training_recipe(info.recipe, home=info.trained_by)
    threads = torch.get_num_threads()
    torch.set_num_threads(info.threads)
    try:
        model = recipe(seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return save_weights(model, out or trained_path(name, seed))
