"""Planting a trojan: train a fresh model on a poisoned training set with the shared loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mlsafety.core import DataLike, Progress, TrainConfig, random_shift, seeded_init, train
from mlsafety.monitoring.trojans.attacks.base import Poisoned, TriggerAttack


def train_trojaned(
    factory: Callable[[], nn.Module],
    dataset: DataLike,
    attack: TriggerAttack,
    rate: float = 0.1,
    target: int = 0,
    seed: int = 0,
    epochs: int = 20,
    progress: Progress | None = None,
    **settings: Any,
) -> tuple[nn.Module, Poisoned]:
    """Train a fresh model from ``factory`` on ``dataset`` poisoned by ``attack``.

    A training recipe on the shared loop (:func:`mlsafety.core.train`, the zoo recipe's settings:
    Adam, cosine schedule, one-pixel random shifts) with a seeded initialisation: ``seed`` decides
    the poisoning (:meth:`TriggerAttack.default_generator`), the initialisation and the batches.

    Args:
        factory: builds the untrained model.
        dataset: the clean labelled training set.
        attack: the trojan attack.
        rate: share of the training set that carries the trigger.
        target: the class the trigger leads to.
        seed: the recipe's seed.
        epochs: passes over the poisoned set.
        progress: progress display.
        **settings: other :class:`~mlsafety.core.TrainConfig` settings (``lr``, ``batch_size``, ``augment`` ...).

    Returns:
        the trojaned model (eval mode) and the poisoned training set it saw.

    Example:
        >>> attack = create("badnets", size=3)
        >>> model, poisoned = train_trojaned(DigitsCNN, load_dataset("digits", "train"), attack, rate=0.1, target=7)
        >>> trojan_metrics(model, attack, load_dataset("digits", "test"), target=7)["attack_success_rate"]
    """
    poisoned = attack.poison(dataset, rate, target, generator=attack.default_generator(seed, target, rate))
    model = seeded_init(factory(), seed, "trojaned", attack.name, target)
    config = TrainConfig(epochs=epochs, seed=seed, augment=random_shift).replace(**settings)
    return train(model, poisoned.data, config, progress=progress), poisoned
