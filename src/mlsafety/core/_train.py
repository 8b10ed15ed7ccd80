"""The one training loop of the project: a configuration, loss hooks and batch hooks.

Every recipe that changes weights runs :func:`train`: the zoo's shipped models, adversarial
training (PGD, TRADES), the augmentation studies (Mixup, CutMix, AugMix, PixMix), outlier
exposure, noise training for randomized smoothing, trojan planting and repair, and the denoisers.
They differ only in

* the **configuration** (:class:`TrainConfig`: epochs, learning rate, batch size, optimiser,
  schedule, weight decay, the seed and the names of the loop's generator);
* the **loss hook** (:data:`LossFn`, ``(model, x, y, generator) -> scalar``; default
  :func:`cross_entropy_loss`): adversarial examples, mixing and auxiliary outliers are made here,
  on the model's device, from the loop's generator;
* the **batch hook** (:data:`BatchHook`, ``(x, generator) -> x``, ``TrainConfig.augment``): an
  input transform applied to each batch on the CPU before it moves to the device (random shifts,
  poisoning a share of the batch, Gaussian noise).

The loop, in this order (the order is part of the contract: shipped weights are reproduced from
it bit for bit on the machine kind that trained them): a generator ``generator(seed, *stream)``;
the optimiser and schedule; with ``seed_dropout``, one draw from the generator seeds PyTorch's
global generators, the CPU's and the model's device's (:func:`~mlsafety.core.seeded_global`: dropout
masks; the caller's global state is restored); per epoch one ``randperm`` of the data, then per batch
the batch hook, the loss hook, ``zero_grad``, ``backward``, ``step``; the schedule steps once per epoch.
The model is trained in place and returned in eval mode; nothing else is restored (the point is to change the weights).

Example:
    >>> from mlsafety.core import TrainConfig, random_shift, seeded_init, train
    >>> model = seeded_init(DigitsCNN(), seed=0)
    >>> train(model, load_dataset("digits", "train"), TrainConfig(epochs=40, augment=random_shift))
    >>> def noisy_loss(model, x, y, g):                 # a loss hook: noise training
    ...     return F.cross_entropy(model(x + 0.25 * randn_like(x, g)), y)
    >>> train(model, data, epochs=5, lr=5e-4, loss=noisy_loss)   # settings as keywords
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core._batches import DataLike, as_array_dataset
from mlsafety.core._errors import InputError, UnknownNameError
from mlsafety.core._model import unwrap_logits
from mlsafety.core._params import HyperParams, Param
from mlsafety.core._progress import Progress, track
from mlsafety.core._random import generator, seeded_global

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""A loss hook: ``(model, x, y, generator) -> scalar loss`` for one batch already on the model's device.

It receives the loop's generator, so any randomness it needs (attack starts, mixing partners,
noise, outliers) stays seeded and in the loop's draw order."""

BatchHook = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""A batch hook: ``(x, generator) -> x'``, a random input transform applied to each training batch
on the CPU, before it moves to the device (e.g. :func:`random_shift`)."""


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The plain supervised loss hook: cross-entropy of ``model(x)`` (its logits, any output form) against ``y``."""
    return F.cross_entropy(unwrap_logits(model(x)), y)


def _callable(value: Any) -> str | None:
    return None if callable(value) else "must be a function (x, generator) -> x"


class TrainConfig(HyperParams):
    """The settings of one run of :func:`train` (declared with the family kit: validated on creation).

    ``replace(**changes)`` gives a copy with some settings changed.
    """

    epochs = Param(40, int, low=1, doc="passes over the data")
    lr = Param(1e-3, float, low=0, low_open=True, doc="learning rate")
    batch_size = Param(64, int, low=1, doc="samples per step")
    weight_decay = Param(1e-4, float, low=0, doc="L2 penalty of the optimiser")
    optimizer = Param("adam", str, choices=("adam", "sgd"), doc="Adam, or SGD with momentum")
    momentum = Param(0.9, float, low=0, high=1, high_open=True, doc="SGD momentum (ignored by Adam)")
    schedule = Param(
        "cosine",
        str,
        choices=("cosine", "constant"),
        doc="cosine annealing stepped per epoch (epoch e of E at lr (1 + cos(pi e / E)) / 2), or none",
    )
    seed = Param(0, int, doc="seed of batch order, batch and loss hooks, and dropout")
    stream = Param(("train",), tuple, doc="names of the loop's generator: generator(seed, *stream)")
    augment = Param(None, None, check=_callable, doc="batch hook (x, generator) -> x, on the CPU")
    seed_dropout = Param(True, bool, doc="seed the global generator (dropout) with a first draw; False skips that draw")
    description = Param("training", str, store=False, doc="label of the progress bar")

    def generator(self) -> torch.Generator:
        """The loop's generator, ``generator(seed, *stream)``."""
        return generator(self.seed, *self.stream)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return type(self)(**{**self.get_params(), **changes})


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@contextlib.contextmanager
def _seeded_dropout(g: torch.Generator, device: torch.device, enabled: bool) -> Iterator[None]:
    """Dropout (and any layer drawing from the global generator) seeded from ``g``; global state restored."""
    if not enabled:
        yield
        return
    with seeded_global(g, [device]):
        yield


def train(
    model: nn.Module,
    data: DataLike,
    config: TrainConfig | None = None,
    *,
    loss: LossFn = cross_entropy_loss,
    progress: Progress | None = None,
    **settings: Any,
) -> nn.Module:
    """Train ``model`` in place on ``data``; returns it in eval mode.

    Args:
        model: the model; its parameters' device is where batches go.
        data: labelled training data, any form of :data:`mlsafety.core.DataLike`.
        config: the settings (default: ``TrainConfig()``).
        loss: the loss hook (default: :func:`cross_entropy_loss`).
        progress: progress display over epochs.
        **settings: :class:`TrainConfig` fields that override ``config`` (``epochs=5, lr=1e-2``).

    Raises:
        InputError: empty data, a model without parameters, or a bad setting.
    """
    config = config or TrainConfig()
    if settings:
        config = config.replace(**settings)
    data = as_array_dataset(data, "data")
    if len(data) == 0:
        raise InputError("cannot train on an empty dataset")
    first = next(model.parameters(), None)
    if first is None:
        raise InputError("the model has no parameters to train")
    device = first.device
    g = config.generator()
    opt = _optimizer(model, config)
    cosine = config.schedule == "cosine"
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs) if cosine else None
    x_all, y_all, n, step = data.x, data.y, len(data), config.batch_size
    model.train()
    with _seeded_dropout(g, device, config.seed_dropout):
        for _epoch in track(range(config.epochs), progress, config.description, total=config.epochs):
            perm = torch.randperm(n, generator=g)
            for start in range(0, n, step):
                idx = perm[start : start + step]
                xb, yb = x_all[idx], y_all[idx]
                if config.augment is not None:
                    xb = config.augment(xb, g)
                batch_loss = loss(model, xb.to(device), yb.to(device), g)
                opt.zero_grad(set_to_none=True)
                batch_loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def seeded_init(model: nn.Module, seed: int, *names: object) -> nn.Module:
    """Re-initialise every layer of ``model`` from a derived seed (PyTorch's default schemes).

    Layer constructors draw from the global generator; this re-draws under a forked, seeded one
    so the result depends only on ``seed`` and ``names`` and the caller's global state is kept.
    A model's own ``reset_parameters`` is called only when it is a single layer (no children), such
    as a bare ``nn.Linear`` head; a composite model's own reset would re-draw its children twice.
    """
    g = generator(seed, "init", *names)
    leaf = next(model.children(), None) is None
    with seeded_global(g, {t.device for t in model.state_dict().values()}):  # a model on a GPU draws there
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and (m is not model or leaf):
                reset()
    return model


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """A batch hook: shift each image by up to ``max_shift`` pixels in each direction (zero fill)."""
    if not (isinstance(max_shift, int) and max_shift >= 0):
        raise InputError(f"random shifts need max_shift >= 0 pixels, got {max_shift!r}")
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# -- training recipes by name ------------------------------------------------------------------
Recipe = Callable[..., nn.Module]
"""A training recipe: ``(seed=0, progress=None) -> trained model`` (the provenance of shipped weights)."""

_RECIPES: dict[str, tuple[Recipe, str]] = {}


def register_recipe(name: str, recipe: Recipe) -> Recipe:
    """Register ``recipe`` under ``name`` (the zoo's models name their recipe; the layer that owns
    the algorithm fills the entry, so the zoo imports no pillar). Returns ``recipe``."""
    if name in _RECIPES and _RECIPES[name][0] is not recipe:
        raise ValueError(f"training recipe {name!r} is already registered by {_RECIPES[name][1]}")
    _RECIPES[name] = (recipe, getattr(recipe, "__module__", "?"))
    return recipe


def training_recipe(name: str, home: str = "") -> Recipe:
    """The recipe registered under ``name``.

    Args:
        name: the recipe's name.
        home: the module that registers it, named in the error when it has not been imported.

    Raises:
        UnknownNameError: nothing registered ``name``.
    """
    if name not in _RECIPES:
        fix = f"import {home} first (the CLI does)" if home else f"registered: {', '.join(sorted(_RECIPES)) or 'none'}"
        raise UnknownNameError(f"no training recipe {name!r} is registered; {fix}")
    return _RECIPES[name][0]
