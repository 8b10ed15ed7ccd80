"""Hardening: PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", 2018), TRADES (Zhang et al., "Theoretically Principled Trade-off between
Robustness and Accuracy", 2019) and fast adversarial training with FGSM from a random start (Wong,
Rice & Kolter, "Fast is better than free: Revisiting adversarial training", 2020).

Both run the shared training loop (:func:`mlsafety.core.train`) with the attack in the loss hook:
Adam with cosine annealing, a generator derived from ``seed`` for shuffling, augmentation and the
attack's random starts, dropout drawn under a forked seeded global generator, the model returned
in eval mode. The model is trained in place; adversarial examples are made with the model in eval
mode (:class:`~mlsafety.robustness.attacks.PGD` freezes it and restores train mode).
"""

from __future__ import annotations

import copy
import inspect
import math
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
    generator,
    rand_like,
    random_shift,
    register_recipe,
    seeded_init,
    train,
    unwrap_logits,
)
from mlsafety.robustness.attacks.pgd import PGD
from mlsafety.zoo import DigitsCNNBN, load_dataset, load_model


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
    if not beta >= 0:
        raise InputError(f"TRADES beta must be >= 0 (the robustness term's weight; 6 in the paper), got {beta}")

    def batch_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            was = m.training
            m.eval()
            p_clean = F.softmax(unwrap_logits(m(x)), dim=1)
            m.train(was)

        def kl(logits: torch.Tensor, _y: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(dim=1)

        # one chunk for the whole batch: the hook's p_clean is row-aligned with the full batch, and the
        # attack's default batch_size would hand it logits of the first 512 rows only
        attack = PGD(eps=eps, norm=norm, steps=steps, step_size=step_size, loss=kl, early_stop=False,
                     batch_size=x.shape[0])  # fmt: skip
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


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, g: torch.Generator,
            step_size: float | None = None) -> torch.Tensor:  # fmt: skip
    """FGSM from a random start (Wong et al., 2020), L-inf: adversarial examples for training.

    ``delta`` is drawn uniformly from ``[-eps, eps]`` (then cut so ``x + delta`` stays in [0, 1]),
    one signed-gradient step of ``step_size`` (default ``1.25 * eps``, the paper's) on the
    cross-entropy is taken, ``delta`` is projected back onto the eps-ball and ``x + delta`` clipped
    to [0, 1]. The gradient is taken with the model in eval mode (its mode is restored), as the
    other hardening methods here do; the paper takes it in train mode. Only the input's gradient
    is computed (the parameters' gradients are left untouched).

    Args:
        model: the classifier (any output form).
        x, y: the batch, images in [0, 1].
        eps: the L-inf radius.
        g: the generator of the random start (on ``x``'s device or the CPU).
        step_size: the FGSM step; None: ``1.25 * eps``.
    """
    alpha = 1.25 * eps if step_size is None else step_size
    was = model.training
    model.eval()
    try:
        delta = (2 * rand_like(x, g) - 1) * eps
        delta = ((x + delta).clamp(0.0, 1.0) - x).requires_grad_(True)
        loss = F.cross_entropy(unwrap_logits(model(x + delta)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        return (x + delta).clamp(0.0, 1.0).detach()
    finally:
        model.train(was)


class _Collapsed(Exception):
    """Raised from the loss hook to leave the training loop after catastrophic overfitting."""


def fast_adversarial_training(
    model: nn.Module,
    data: DataLike,
    eps: float,
    step_size: float | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    augment: BatchHook | None = None,
    weight_decay: float = 1e-4,
    holdout: DataLike | None = None,
    check_steps: int = 10,
    collapse_ratio: float = 0.5,
    history: list[tuple[int, float]] | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Fast adversarial training (Wong, Rice & Kolter, 2020): the cross-entropy on :func:`fgsm_rs`
    examples (L-inf), about twice the cost of clean training, with the paper's guard against
    catastrophic overfitting.

    The guard: at the end of each epoch the model's PGD accuracy (``check_steps`` steps, step
    ``2.5 * eps / check_steps``, one random start from a fixed generator) on ``holdout`` is
    measured; the weights of the epoch with the best PGD accuracy are kept, and training stops when
    an epoch's PGD accuracy falls below ``collapse_ratio`` times the best so far (FGSM training that
    overfits catastrophically loses its PGD accuracy within an epoch while its FGSM accuracy rises).

    Deviations from the paper: Adam with cosine annealing (this project's loop) instead of SGD with
    a cyclic learning rate, no mixed precision, the attack's gradient taken in eval mode (see
    :func:`fgsm_rs`), and the PGD check run on a held-out set every epoch rather than on a training
    minibatch.

    Args:
        model: trained in place; returned in eval mode with the best epoch's weights.
        data: labelled training data in [0, 1].
        eps: the L-inf training radius in [0, 1] pixel units.
        step_size: the FGSM step; None: ``1.25 * eps``.
        epochs, lr, batch_size, weight_decay: the optimiser's settings (Adam, cosine schedule).
        seed: seeds shuffling, augmentation, the random starts and dropout.
        augment: the batch hook, applied before the attack.
        holdout: labelled data for the guard (a few hundred images are enough); None: no guard
            (the last epoch's weights are returned).
        check_steps: PGD steps of the guard's check.
        collapse_ratio: stop when the PGD accuracy falls below this share of the best.
        history: when given, ``(epoch, PGD accuracy)`` is appended for every check.
        progress: show progress over epochs.
    """
    if not 0 < eps <= 1:
        raise InputError(f"fast adversarial training needs eps in (0, 1], got {eps}")
    if not 0 < collapse_ratio < 1:
        raise InputError(f"collapse_ratio must be in (0, 1), got {collapse_ratio}")
    data = as_array_dataset(data, "data")
    check_data = None if holdout is None else as_array_dataset(holdout, "holdout")
    per_epoch = math.ceil(len(data) / batch_size)
    check = PGD(eps=eps, norm="linf", steps=check_steps, early_stop=False)
    best: dict[str, Any] = {"acc": -1.0, "state": None}
    seen = {"batches": 0}

    def guard(m: nn.Module, epoch: int) -> None:
        assert check_data is not None
        device = next(m.parameters()).device
        x, y = check_data.x.to(device), check_data.y.to(device)
        x_adv = check(m, x, y, generator=generator(seed, "fast-at-check"))
        was = m.training
        m.eval()
        with torch.no_grad():
            acc = float((unwrap_logits(m(x_adv)).argmax(1) == y).float().mean())
        m.train(was)
        if history is not None:
            history.append((epoch, acc))
        if acc > best["acc"]:
            best.update(acc=acc, state=copy.deepcopy(m.state_dict()))
        elif acc < collapse_ratio * best["acc"]:
            raise _Collapsed

    def batch_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if check_data is not None and seen["batches"] and seen["batches"] % per_epoch == 0:
            guard(m, seen["batches"] // per_epoch)
        seen["batches"] += 1
        return F.cross_entropy(unwrap_logits(m(fgsm_rs(m, x, y, eps, g, step_size))), y)

    try:
        _train(model, data, batch_loss, "fast-at", progress, epochs=epochs, lr=lr, batch_size=batch_size,
               weight_decay=weight_decay, seed=seed, augment=augment)  # fmt: skip
        if check_data is not None:
            guard(model, epochs)
    except _Collapsed:
        pass
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return model.eval()


METHODS: dict[str, Callable[..., nn.Module]] = {
    "pgd": adversarial_training,
    "trades": trades_training,
    "fast": fast_adversarial_training,
}
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
        method: ``"pgd"`` (:func:`adversarial_training`), ``"trades"`` (:func:`trades_training`) or
            ``"fast"`` (:func:`fast_adversarial_training`, FGSM from a random start, L-inf only).
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


FASHION_AT_EPS = 0.1
"""The L-inf radius of ``fashion-cnn-at`` (the MNIST family's standard small budget)."""

FASHION_AT_EPOCHS = 4
"""Epochs of the ``fashion-cnn-at`` recipe (fine-tuning the shipped ``fashion-cnn``)."""


def train_fashion_cnn_at(
    seed: int = 0,
    progress: Progress | None = None,
    epochs: int = FASHION_AT_EPOCHS,
    n_train: int | None = None,
    lr: float = 5e-4,
    history: list[tuple[int, float]] | None = None,
) -> nn.Module:
    """The recipe behind the shipped ``fashion-cnn-at`` weights: the shipped ``fashion-cnn``
    fine-tuned by :func:`fast_adversarial_training` (FGSM from a random start, L-inf eps 0.1, step
    0.125) on the 55,000-image ``train`` split (Adam, weight decay 1e-4, batch 128, cosine schedule,
    no augmentation), the guard measuring PGD-10 accuracy on the first 500 images of the ``val``
    split after each epoch.

    Madry's PGD-7 training makes 8 forward and backward passes per batch, FGSM-RS 2; measured on one
    CPU thread an FGSM-RS epoch with its guard took 82-115 s of CPU time against about 32 s for a clean
    epoch (``bench/results/fashion_variants.md``). Deviation: adversarial fine-tuning of the clean model
    for a few epochs, not training from scratch (which costs more CPU time than this project could
    spend on its shared machine); the paper's other deviations are listed at
    :func:`fast_adversarial_training`.

    Args:
        seed: seeds the batch order, dropout and the random starts.
        progress: progress display over epochs.
        epochs: passes over the data (the shipped weights: the default).
        n_train: train on only the first ``n_train`` images of the split (a quick check); None: all.
        lr: Adam's starting learning rate.
        history: as for :func:`fast_adversarial_training`.
    """
    model = load_model("fashion-cnn")
    data = load_dataset("fashion-mnist", "train")
    if n_train is not None:
        data = data.subset(torch.arange(min(n_train, len(data))))
    holdout = load_dataset("fashion-mnist", "val").subset(torch.arange(500))
    return fast_adversarial_training(model, data, eps=FASHION_AT_EPS, epochs=epochs, lr=lr, batch_size=128,
                                     seed=seed, holdout=holdout, history=history, progress=progress)  # fmt: skip


register_recipe("fashion-cnn-at", train_fashion_cnn_at)
