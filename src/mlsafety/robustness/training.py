"""Hardening: PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", 2018) and TRADES (Zhang et al., "Theoretically Principled Trade-off between
Robustness and Accuracy", 2019).

Both run the shared training loop (:func:`mlsafety.core.train`) with the attack in the loss hook:
Adam with cosine annealing, a generator derived from ``seed`` for shuffling, augmentation and the
attack's random starts, dropout drawn under a forked seeded global generator, the model returned
in eval mode. The model is trained in place; adversarial examples are made with the model in eval
mode (:class:`~mlsafety.robustness.attacks.PGD` freezes it and restores train mode).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    BatchHook,
    DataLike,
    InputError,
    LossFn,
    Progress,
    TrainConfig,
    as_array_dataset,
    random_shift,
    register_recipe,
    seeded_init,
    train,
    unwrap_logits,
)
from mlsafety.robustness.attacks.pgd import PGD
from mlsafety.zoo import DigitsCNNBN, load_dataset


def adversarial_training(
    model: nn.Module,
    data: DataLike,
    eps: float,
    norm: str = "linf",
    steps: int = 7,
    step_size: float | None = None,
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: BatchHook | None = None,
    weight_decay: float = 1e-4,
    progress: Progress | None = None,
) -> nn.Module:
    """Madry's PGD adversarial training: minimise the cross-entropy on PGD adversarial examples.

    Args:
        model: trained in place (its parameters must require gradients); returned in eval mode.
        data: labelled training data in [0, 1], any form of :data:`mlsafety.core.DataLike`.
        eps: training radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps per batch; ``step_size`` None means PGD's ``2.5 * eps / steps``.
        epochs, lr, batch_size, weight_decay: the optimiser's settings (Adam, cosine schedule).
        seed: seeds shuffling, augmentation, random starts and dropout.
        augment: the batch hook ``(x, generator) -> x``, applied before the attack (e.g.
            :func:`mlsafety.core.random_shift`).
        progress: show progress over epochs.

    Example:
        >>> hardened = adversarial_training(copy.deepcopy(model), load_dataset("digits", "train"), eps=0.1)
    """
    # early_stop=False: keep maximising the loss, the training signal, after the label flips.
    attack = PGD(eps=eps, norm=norm, steps=steps, step_size=step_size, early_stop=False)

    def batch_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x_adv = attack(m, x, y, generator=g)
        return F.cross_entropy(unwrap_logits(m(x_adv)), y)

    return _train(model, data, batch_loss, "pgd-at", progress, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed, augment=augment)  # fmt: skip


def trades_training(
    model: nn.Module,
    data: DataLike,
    eps: float,
    beta: float = 6.0,
    norm: str = "linf",
    steps: int = 7,
    step_size: float | None = None,
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: BatchHook | None = None,
    weight_decay: float = 1e-4,
    progress: Progress | None = None,
) -> nn.Module:
    """TRADES: cross-entropy on clean inputs plus ``beta`` times ``KL(f(x) || f(x_adv))``.

    ``x_adv`` maximises the KL term inside the eps-ball; it is found with
    :class:`~mlsafety.robustness.attacks.PGD` through its loss hook (the reference starts from
    ``x`` plus small Gaussian noise; PGD's uniform random start serves the same purpose).

    Args:
        beta: weight of the robustness term (6 in the paper's CIFAR-10 setting).
        Other arguments as for :func:`adversarial_training`.
    """

    def batch_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            was = m.training
            m.eval()
            p_clean = F.softmax(unwrap_logits(m(x)), dim=1)
            m.train(was)

        def kl(logits: torch.Tensor, _y: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(dim=1)

        attack = PGD(eps=eps, norm=norm, steps=steps, step_size=step_size, loss=kl, early_stop=False)
        x_adv = attack(m, x, y, generator=g)
        logits_clean = unwrap_logits(m(x))
        adv_log_probs = F.log_softmax(unwrap_logits(m(x_adv)), dim=1)
        robust = F.kl_div(adv_log_probs, F.softmax(logits_clean, dim=1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + beta * robust

    return _train(model, data, batch_loss, "trades", progress, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed, augment=augment)  # fmt: skip


def _train(
    model: nn.Module, data: DataLike, loss: LossFn, method: str, progress: Progress | None, **settings: Any
) -> nn.Module:
    """The shared loop with the method's loss hook, generator ``generator(seed, "train", method)``."""
    config = TrainConfig(stream=("train", method), description=method, **settings)
    return train(model, as_array_dataset(data, "data"), config, loss=loss, progress=progress)


METHODS: dict[str, Callable[..., nn.Module]] = {"pgd": adversarial_training, "trades": trades_training}
"""Hardening methods by name (the names ``mlsafety harden --method`` takes)."""


def harden(
    model: nn.Module,
    data: DataLike,
    method: str = "pgd",
    from_scratch: bool = False,
    seed: int = 0,
    **params: Any,
) -> nn.Module:
    """A hardened copy of ``model`` (the model itself is left unchanged).

    Args:
        model: the model to harden.
        data: labelled training data in [0, 1].
        method: ``"pgd"`` (:func:`adversarial_training`) or ``"trades"`` (:func:`trades_training`).
        from_scratch: re-initialise every layer (seeded) before training instead of fine-tuning.
        seed: the training seed (also seeds the re-initialisation).
        **params: the method's other arguments (``eps`` is required).
    """
    if method not in METHODS:
        raise InputError(f"unknown hardening method {method!r}; use one of {', '.join(METHODS)}")
    if "eps" not in params:
        raise InputError("hardening needs eps, the training radius in [0, 1] pixel units")
    valid = [p for p in inspect.signature(METHODS[method]).parameters if p not in ("model", "data", "seed")]
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise InputError(
            f"hardening method {method!r} has no parameter {', '.join(map(repr, unknown))}. "
            f"Valid parameters: {', '.join(valid)}"
        )
    data = as_array_dataset(data, "data")
    hardened = copy.deepcopy(model)
    if from_scratch:
        seeded_init(hardened, seed, "harden", method)
    return METHODS[method](hardened, data, seed=seed, **params)


def train_digits_cnn_bn_at(seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-cnn-bn-at`` weights: :func:`adversarial_training` (PGD
    Linf eps 0.1, one-pixel random shifts) of a seeded :class:`~mlsafety.zoo.DigitsCNNBN` on the
    digits train split (deterministic on the CPU)."""
    model = seeded_init(DigitsCNNBN(), seed, "digits-cnn-bn-at")
    data = load_dataset("digits", "train")
    return adversarial_training(model, data, eps=0.1, seed=seed, augment=random_shift, progress=progress)


register_recipe("digits-cnn-bn-at", train_digits_cnn_bn_at)
