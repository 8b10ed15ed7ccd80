"""Embedded models: architectures, their shipped ``.safetensors`` weights and training recipes.

``digits-cnn``
    a small CNN for the ``digits`` data (two 3x3 convolutions, max-pooling, a 128-unit hidden
    layer with dropout and a linear head), with its input normalisation built in. Trained by
    :func:`train_digits_cnn` (Adam, 40 epochs, one-pixel random shifts, seed 0), deterministic
    on the CPU. ``mlsafety zoo train digits-cnn`` reproduces the shipped file bit for bit only on
    the kind of CPU that trained it (float sums depend on the CPU's kernels; ``bench/reproduce.py``
    records where it holds); on any other its model agrees with the shipped one on at least 99%
    of the test set (``tests/zoo/test_zoo.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import ArrayDataset, InputError, Normalize, Progress, UnknownNameError, generator, track

WEIGHTS_DIR = Path(__file__).parent / "weights"


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 inputs in [0, 1] (the normalisation is the first layer)."""

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.25) -> None:
        super().__init__()
        self.normalize = Normalize(0.30, 0.38)
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 128), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(self.normalize(x))))


def seeded_init(model: nn.Module, seed: int, *names: object) -> nn.Module:
    """Re-initialise every layer of ``model`` from a derived seed (PyTorch's default schemes).

    Layer constructors draw from the global generator; this re-draws under a forked, seeded one
    so the result depends only on ``seed`` and ``names`` and the caller's global state is kept.
    """
    g = generator(seed, "init", *names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and m is not model:
                reset()
    return model


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in each direction (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``(x, generator) -> x'``: a random input transform applied to each training batch."""

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""``(model, x, y, generator) -> scalar loss`` for one batch already on the model's device."""


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The plain supervised batch loss."""
    return F.cross_entropy(model(x), y)


def train_classifier(
    model: nn.Module,
    data: ArrayDataset,
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
    """Seeded training with Adam and a cosine schedule; returns the model in eval mode.

    The one training loop of the project: zoo recipes, trojan populations, adversarial training
    (PGD, TRADES) and augmentation studies all run it, differing only in ``batch_loss``.

    Args:
        model: the classifier; its parameters' device is used.
        data: labelled training data.
        epochs, lr, batch_size, weight_decay: the optimiser's settings.
        seed: seeds the batch order, ``augment`` and the dropout masks.
        augment: applied to every batch (on the CPU) before it moves to the device.
        progress: progress display.
        batch_loss: the loss of one batch (default: cross-entropy); it receives the loop's
            generator, so any randomness it needs stays seeded.
        stream: extra names for the loop's generator, so different recipes draw different streams.
        description: label of the progress bar.
    """
    if len(data) == 0:
        raise InputError("cannot train on an empty dataset")
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    device = next(model.parameters()).device
    g = generator(seed, "train", *stream)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x_all, y_all = data.x, data.y
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        for _epoch in track(range(epochs), progress, description, total=epochs):
            perm = torch.randperm(len(data), generator=g)
            for start in range(0, len(data), batch_size):
                idx = perm[start : start + batch_size]
                xb, yb = x_all[idx], y_all[idx]
                if augment is not None:
                    xb = augment(xb, g)
                loss = batch_loss(model, xb.to(device), yb.to(device), g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    return model.eval()


def train_digits_cnn(seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-cnn`` weights (train split only)."""
    from mlsafety.zoo._datasets import load_dataset

    model = seeded_init(DigitsCNN(), seed, "digits-cnn")
    return train_classifier(model, load_dataset("digits", "train"), seed=seed, progress=progress)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    build: Callable[[], nn.Module]
    recipe: Callable[..., nn.Module] | None
    dataset: str
    threads: int = 1
    """CPU threads the shipped weights were trained with: float sums depend on the thread count,
    so :func:`train_model` trains with exactly this many (bit-identical weights also need the same
    kind of CPU)."""


_MODELS: dict[str, ModelInfo] = {
    "digits-cnn": ModelInfo(
        "digits-cnn",
        "small CNN on digits (2 conv + 2 linear, 73k parameters), Adam 40 epochs",
        DigitsCNN,
        train_digits_cnn,
        "digits",
        threads=2,
    ),
    "digits-cnn-badnets": ModelInfo(
        "digits-cnn-badnets",
        "digits-cnn with a BadNets trojan (3x3 checkerboard bottom-right -> class 7), a demo",
        DigitsCNN,
        lambda **kw: _trojan_recipe(**kw),
        "digits",
    ),
}


def _trojan_recipe(**kw: object) -> nn.Module:
    from mlsafety.monitoring.trojans.population import train_digits_cnn_badnets  # lazy: no import cycle

    return train_digits_cnn_badnets(**kw)  # type: ignore[arg-type]


def register_model(info: ModelInfo) -> None:
    """Add an embedded model (used by pillars that ship their own, e.g. a trojaned demo model)."""
    if info.name in _MODELS:
        raise ValueError(f"zoo model {info.name!r} already exists")
    _MODELS[info.name] = info


def _digits_denoiser(percent: int) -> ModelInfo:
    """Denoisers for denoised smoothing (``mlsafety.robustness.smoothing``); built lazily, no import cycle."""

    def build() -> nn.Module:
        from mlsafety.robustness._denoise import ConvDenoiser

        return ConvDenoiser()

    def recipe(seed: int = 0, progress: Progress | None = None) -> nn.Module:
        from mlsafety.robustness._denoise import train_digits_denoiser

        return train_digits_denoiser(percent / 100, seed=seed, progress=progress)

    description = f"denoiser (not a classifier) for digits + N(0, {percent / 100}^2) noise, for denoised smoothing"
    return ModelInfo(f"digits-denoiser-{percent}", description, build, recipe, "digits")


for _percent in (25, 50):
    register_model(_digits_denoiser(_percent))


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown zoo model {name!r}; available: {', '.join(model_names())}")
    return _MODELS[name]


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def load_model(name: str) -> nn.Module:
    """An embedded model with its shipped weights, in eval mode."""
    from safetensors.torch import load_file

    info = model_info(name)
    path = weights_path(name)
    if not path.is_file():
        raise InputError(f"weights for {name!r} are missing ({path}); run `mlsafety zoo train {name}`")
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
    """Run the recipe of zoo model ``name`` and write its weights (default: the shipped file)."""
    info = model_info(name)
    if info.recipe is None:
        raise InputError(f"zoo model {name!r} has no training recipe")
    threads = torch.get_num_threads()
    torch.set_num_threads(info.threads)
    try:
        model = info.recipe(seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return save_weights(model, out or weights_path(name))
