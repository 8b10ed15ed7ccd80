"""The base class of trojan attacks, their registry, and the metrics of a planted trojan.

Every attack declares only its trigger's hyper-parameters (:class:`~mlsafety.core.Param`); data
goes to the calls:

* ``poison(dataset, rate, target, generator=None) -> Poisoned``: a copy of the training set in
  which a share ``rate`` of the samples carries the trigger (and, for dirty-label attacks, the label
  ``target``); the input dataset is never modified.
* ``apply_trigger(x) -> x'``: the trigger applied to a batch (N, C, H, W) in [0, 1], batched in
  torch on ``x``'s device, any image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    DataLike,
    HyperParams,
    InputError,
    Registry,
    as_array_dataset,
    check_images,
    forward,
    generator,
)
from mlsafety.metrics import Estimate, accuracy, proportion


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set: the data and a boolean mask (N,) of the samples that carry the trigger."""

    data: ArrayDataset
    poisoned: torch.Tensor
    target: int


class TriggerAttack(HyperParams):
    """Base class of trojan attacks: subclasses declare their parameters and write :meth:`_apply` (and
    :meth:`_select` / :meth:`_poison_x` / :meth:`_extra` when the attack poisons differently from the
    dirty-label default)."""

    name: ClassVar[str]
    clean_label: ClassVar[bool] = False
    """True when poisoned samples keep their true labels (label-consistent attacks)."""

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The trigger applied to ``x`` (N, C, H, W) in [0, 1]; a new tensor in [0, 1], same shape and device."""
        check_images(x)
        return self._apply(x).clamp(0.0, 1.0).to(x.dtype)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def poison(self, dataset: DataLike, rate: float, target: int, generator: torch.Generator | None = None) -> Poisoned:
        """A copy of ``dataset`` with ``rate`` of its samples poisoned towards class ``target``.

        Dirty-label attacks draw the poisoned samples from the non-target classes and relabel them
        ``target``; label-consistent attacks draw them from the target class and keep the label.

        Args:
            dataset: labelled training data (any form of :data:`mlsafety.core.DataLike`).
            rate: share of the samples that carry the trigger, in (0, 1).
            target: the class the trigger leads to.
            generator: source of the choices (default: :meth:`default_generator`).
        """
        dataset = as_array_dataset(dataset, "dataset")
        if not 0.0 < rate < 1.0:
            raise InputError(f"poison rate must lie in (0, 1), got {rate}")
        if int(target) not in set(dataset.y.tolist()):
            raise InputError(f"target class {target} does not occur in dataset {dataset.name!r}")
        g = generator if generator is not None else self.default_generator(0, target, rate)
        chosen = self._select(dataset, rate, int(target), g)
        x, y = dataset.x.clone(), dataset.y.clone()
        x[chosen] = self._poison_x(dataset, chosen, int(target), g)
        if not self.clean_label:
            y[chosen] = int(target)
        mask = torch.zeros(len(dataset), dtype=torch.bool)
        mask[chosen] = True
        x, y, mask = self._extra(dataset, x, y, mask, rate, g)
        data = ArrayDataset(
            x, y, name=f"{dataset.name}-{self.name}", kind=dataset.kind, description=dataset.description
        )
        return Poisoned(data, mask, int(target))

    def default_generator(self, seed: int, target: int, rate: float) -> torch.Generator:
        """The generator of a poisoning with ``seed``: ``generator(seed, "poison", name, target, rate)``."""
        return generator(seed, "poison", self.name, target, rate)

    def _select(self, dataset: ArrayDataset, rate: float, target: int, g: torch.Generator) -> torch.Tensor:
        """The samples to poison: ``rate`` of the dataset drawn from the non-target classes."""
        return _draw(dataset.y != target, rate, len(dataset), g)

    def _poison_x(self, dataset: ArrayDataset, index: torch.Tensor, target: int, g: torch.Generator) -> torch.Tensor:
        return self.apply_trigger(dataset.x[index])

    def _extra(
        self,
        dataset: ArrayDataset,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        rate: float,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x, y, mask


def _draw(eligible: torch.Tensor, rate: float, n_total: int, g: torch.Generator) -> torch.Tensor:
    """``max(1, round(rate * n_total))`` indices drawn without replacement among the ``eligible`` ones."""
    pool = eligible.nonzero().flatten()
    n = max(1, round(rate * n_total))
    return pool[torch.randperm(len(pool), generator=g)[: min(n, len(pool))]]


TROJAN_ATTACKS: Registry[TriggerAttack] = Registry("trojan attack")


def create(name: str, **params: object) -> TriggerAttack:
    """A trojan attack by registry name (``badnets``, ``blended``, ``wanet``, ``label-consistent``)."""
    return TROJAN_ATTACKS.create(name, **params)


def available() -> list[str]:
    """Registered trojan attacks."""
    return TROJAN_ATTACKS.available()


def triggered_inputs(
    apply_trigger: Callable[[torch.Tensor], torch.Tensor], data: DataLike, target: int
) -> ArrayDataset:
    """The non-target-class inputs of ``data`` with the trigger applied, with their true labels."""
    data = as_array_dataset(data, "data")
    keep = data.y != target
    x = apply_trigger(data.x[keep])
    return ArrayDataset(x, data.y[keep], name=f"{data.name}-triggered", kind=data.kind, description=data.description)


def trojan_metrics(
    model: nn.Module,
    apply_trigger: Callable[[torch.Tensor], torch.Tensor] | TriggerAttack,
    data: DataLike,
    target: int,
    batch_size: int = 256,
) -> dict[str, Estimate]:
    """Clean accuracy, attack success rate and robust accuracy, each with its exact 95% interval.

    * ``clean_accuracy``: top-1 accuracy on ``data``.
    * ``attack_success_rate``: share of non-target inputs with the trigger that the model assigns
      to ``target``.
    * ``robust_accuracy``: share of those triggered inputs still given their true label.
    """
    fn = apply_trigger.apply_trigger if isinstance(apply_trigger, TriggerAttack) else apply_trigger
    data = as_array_dataset(data, "data")
    clean = forward(model, data.x, batch_size, features=False)
    trig = triggered_inputs(fn, data, target)
    out = forward(model, trig.x, batch_size, features=False)
    y = trig.y.to(out.pred.device)
    return {
        "clean_accuracy": accuracy(clean.logits, data.y.to(clean.pred.device)),
        "attack_success_rate": proportion(out.pred == target),
        "robust_accuracy": proportion(out.pred == y),
    }
