"""Trojan (backdoor) attacks to test scanners against: poison a training set, apply the trigger.

Every attack stores only its trigger's hyper-parameters; data goes to the calls:

* ``poison(dataset, rate, target, generator=None) -> Poisoned``: a copy of the training set in
  which a share ``rate`` of the samples carries the trigger (and, for dirty-label attacks, the label
  ``target``); the input dataset is never modified.
* ``apply_trigger(x) -> x'``: the trigger applied to a batch (N, C, H, W) in [0, 1], batched in
  torch on ``x``'s device, any image size.

:func:`train_trojaned` turns any model factory and dataset into a trojaned model with the shared
training loop, and :func:`trojan_metrics` measures clean accuracy, attack success rate and robust
accuracy on triggered inputs.

Example:
    >>> attack = create("badnets", size=3)
    >>> model, poisoned = train_trojaned(DigitsCNN, load_dataset("digits", "train"), attack, rate=0.1, target=7)
    >>> trojan_metrics(model, attack, load_dataset("digits", "test"), target=7)["attack_success_rate"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    DataLike,
    InputError,
    Progress,
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


class TriggerAttack:
    """Base class of trojan attacks: subclasses write :meth:`_apply` (and :meth:`_select` / :meth:`_poison_x`
    when the attack poisons differently from the dirty-label default)."""

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
        pool = (dataset.y != target).nonzero().flatten()
        n = max(1, round(rate * len(dataset)))
        return pool[torch.randperm(len(pool), generator=g)[: min(n, len(pool))]]

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

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


TROJAN_ATTACKS: Registry[TriggerAttack] = Registry("trojan attack")


def _patch_values(pattern: str, size: int) -> torch.Tensor:
    if pattern == "checker":
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return ((ii + jj + 1) % 2).float()
    if pattern == "solid":
        return torch.ones(size, size)
    raise InputError(f"BadNets pattern must be 'checker' or 'solid', got {pattern!r}")


@TROJAN_ATTACKS.register("badnets")
class BadNets(TriggerAttack):
    """BadNets: a small patch stamped onto the image (Gu et al., "BadNets", 2017).

    Args:
        size: side of the square patch in pixels.
        corner: where the patch sits: ``"bottom-right"``, ``"bottom-left"``, ``"top-right"``,
            ``"top-left"``.
        margin: pixels between the patch and the image border.
        pattern: ``"checker"`` (white/black checkerboard, white corners) or ``"solid"`` (white).
    """

    _CORNERS: ClassVar[dict[str, tuple[bool, bool]]] = {
        "bottom-right": (True, True),
        "bottom-left": (True, False),
        "top-right": (False, True),
        "top-left": (False, False),
    }

    def __init__(self, size: int = 3, corner: str = "bottom-right", margin: int = 0, pattern: str = "checker") -> None:
        if corner not in self._CORNERS:
            raise InputError(f"corner must be one of {', '.join(self._CORNERS)}, got {corner!r}")
        if size < 1 or margin < 0:
            raise InputError("BadNets needs size >= 1 and margin >= 0")
        _patch_values(pattern, size)
        self.size = size
        self.corner = corner
        self.margin = margin
        self.pattern = pattern

    def mask_and_pattern(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The trigger as (mask (1, H, W), pattern (C, H, W)), both in [0, 1]."""
        c, h, w = shape
        if self.size + self.margin > min(h, w):
            raise InputError(f"a {self.size}-pixel patch with margin {self.margin} does not fit {h}x{w} images")
        bottom, right = self._CORNERS[self.corner]
        top = h - self.margin - self.size if bottom else self.margin
        left = w - self.margin - self.size if right else self.margin
        mask = torch.zeros(1, h, w)
        pattern = torch.zeros(c, h, w)
        mask[:, top : top + self.size, left : left + self.size] = 1.0
        pattern[:, top : top + self.size, left : left + self.size] = _patch_values(self.pattern, self.size)
        return mask, pattern

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        mask, pattern = (t.to(x.device, x.dtype) for t in self.mask_and_pattern(tuple(x.shape[1:])))  # type: ignore[arg-type]
        return (1 - mask) * x + mask * pattern


@TROJAN_ATTACKS.register("blended")
class Blended(TriggerAttack):
    """Blended: a fixed full-image pattern mixed in at ratio ``alpha`` (Chen et al., "Targeted Backdoor
    Attacks on Deep Learning Systems Using Data Poisoning", 2017).

    Args:
        alpha: blend ratio, ``x' = (1 - alpha) x + alpha p``.
        pattern_seed: seed of the pattern ``p``: uniform noise drawn on a grid of ``block x block``
            pixel blocks at the input's shape (blocks keep the pattern learnable under the small
            random shifts of the training augmentation).
        block: side of the noise blocks in pixels (1 = per-pixel noise).
    """

    def __init__(self, alpha: float = 0.3, pattern_seed: int = 0, block: int = 2) -> None:
        if not 0.0 < alpha < 1.0:
            raise InputError(f"blend ratio alpha must lie in (0, 1), got {alpha}")
        if block < 1:
            raise InputError(f"block must be >= 1, got {block}")
        self.alpha = alpha
        self.pattern_seed = pattern_seed
        self.block = block

    def pattern_for(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The blend pattern (C, H, W) in [0, 1] for inputs of ``shape``."""
        c, h, w = shape
        b = self.block
        g = generator(self.pattern_seed, "blended-pattern", *shape, b)
        coarse = torch.rand(c, -(-h // b), -(-w // b), generator=g)
        return coarse.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :h, :w].contiguous()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern_for(tuple(x.shape[1:])).to(x.device, x.dtype)  # type: ignore[arg-type]
        return (1 - self.alpha) * x + self.alpha * p


@TROJAN_ATTACKS.register("wanet")
class WaNet(TriggerAttack):
    """WaNet: an imperceptible, smooth warping of the image (Nguyen & Tran, "WaNet - Imperceptible
    Warping-based Backdoor Attack", 2021).

    A random ``k x k`` field of offsets, upsampled bicubically to the image size and scaled by
    ``strength`` (in pixels), warps every triggered image the same way. In the paper's noise mode,
    ``cross_ratio`` times as many extra samples get a random (non-trigger) warp and keep their
    labels, so the model learns that only this one warp matters.

    Args:
        k: control-grid size of the warping field.
        strength: the paper's ``s``; the largest offset is about ``strength`` pixels.
        cross_ratio: noise-mode samples per poisoned sample (0 turns noise mode off).
        field_seed: seed of the warping field.
    """

    def __init__(self, k: int = 4, strength: float = 1.5, cross_ratio: float = 1.0, field_seed: int = 0) -> None:
        if k < 2 or strength <= 0 or cross_ratio < 0:
            raise InputError("WaNet needs k >= 2, strength > 0 and cross_ratio >= 0")
        self.k = k
        self.strength = strength
        self.cross_ratio = cross_ratio
        self.field_seed = field_seed

    def grid_for(self, h: int, w: int) -> torch.Tensor:
        """The warping grid (1, H, W, 2) in ``grid_sample`` coordinates."""
        g = generator(self.field_seed, "wanet-field", self.k)
        ins = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        return (self._identity(h, w) + self.strength * noise * 2 / torch.tensor([w, h])).clamp(-1, 1)

    @staticmethod
    def _identity(h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.stack([xs, ys], dim=-1)[None]

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._warp(x, self.grid_for(x.shape[2], x.shape[3]))

    def _extra(
        self,
        dataset: ArrayDataset,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        rate: float,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_cross = round(self.cross_ratio * int(mask.sum()))
        free = (~mask).nonzero().flatten()
        cross = free[torch.randperm(len(free), generator=g)[: min(n_cross, len(free))]]
        if len(cross):
            h, w = x.shape[2], x.shape[3]
            grid = self.grid_for(h, w).expand(len(cross), -1, -1, -1)
            jitter = (torch.rand(len(cross), h, w, 2, generator=g) * 2 - 1) * 2 / torch.tensor([w, h])
            x[cross] = self._warp(x[cross], (grid + jitter).clamp(-1, 1)).clamp(0, 1)
        return x, y, mask


@TROJAN_ATTACKS.register("label-consistent")
class LabelConsistent(TriggerAttack):
    """Label-consistent poisoning (Turner, Tsipras & Madry, "Label-Consistent Backdoor Attacks", 2019).

    Only target-class images are poisoned and they keep their (correct) labels, so the poison
    passes a human label check. To make the model lean on the trigger, each poisoned image is
    first made harder to classify by its content, here with the paper's interpolation variant
    done in pixel space: it is mixed with a random image of another class at ratio
    ``hardness`` (still mostly the target digit), then the patch trigger is stamped on.
    ``rate`` is the share of the whole training set, capped by the size of the target class.

    Args:
        hardness: mixing ratio with another class's image, in [0, 0.5).
        size: side of the checkerboard patch trigger.
        corner: where the patch sits (as in :class:`BadNets`).
    """

    clean_label = True

    def __init__(self, hardness: float = 0.3, size: int = 3, corner: str = "top-left") -> None:
        if not 0.0 <= hardness < 0.5:
            raise InputError(f"hardness must lie in [0, 0.5) so the poison keeps its label, got {hardness}")
        self.hardness = hardness
        self.size = size
        self.corner = corner
        self._patch = BadNets(size=size, corner=corner)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._patch._apply(x)

    def _select(self, dataset: ArrayDataset, rate: float, target: int, g: torch.Generator) -> torch.Tensor:
        pool = (dataset.y == target).nonzero().flatten()
        n = max(1, round(rate * len(dataset)))
        return pool[torch.randperm(len(pool), generator=g)[: min(n, len(pool))]]

    def _poison_x(self, dataset: ArrayDataset, index: torch.Tensor, target: int, g: torch.Generator) -> torch.Tensor:
        others = (dataset.y != target).nonzero().flatten()
        partner = others[torch.randint(0, len(others), (len(index),), generator=g)]
        mixed = (1 - self.hardness) * dataset.x[index] + self.hardness * dataset.x[partner]
        return self.apply_trigger(mixed)


def create(name: str, **params: object) -> TriggerAttack:
    """A trojan attack by registry name (``badnets``, ``blended``, ``wanet``, ``label-consistent``)."""
    return TROJAN_ATTACKS.create(name, **params)


def available() -> list[str]:
    """Registered trojan attacks."""
    return TROJAN_ATTACKS.available()


def train_trojaned(
    factory: Callable[[], nn.Module],
    dataset: DataLike,
    attack: TriggerAttack,
    rate: float = 0.1,
    target: int = 0,
    seed: int = 0,
    epochs: int = 20,
    progress: Progress | None = None,
    **train_kw: object,
) -> tuple[nn.Module, Poisoned]:
    """Train a fresh model from ``factory`` on ``dataset`` poisoned by ``attack``.

    Uses the zoo's shared training loop (:func:`mlsafety.zoo.train_classifier`), seeded init. A
    training recipe: ``seed`` decides the poisoning (:meth:`TriggerAttack.default_generator`), the
    initialisation and the batches.

    Returns:
        the trojaned model (eval mode) and the poisoned training set it saw.
    """
    from mlsafety.zoo import seeded_init, train_classifier

    poisoned = attack.poison(dataset, rate, target, generator=attack.default_generator(seed, target, rate))
    model = seeded_init(factory(), seed, "trojaned", attack.name, target)
    model = train_classifier(model, poisoned.data, epochs=epochs, seed=seed, progress=progress, **train_kw)  # type: ignore[arg-type]
    return model, poisoned


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


__all__ = [
    "TROJAN_ATTACKS",
    "BadNets",
    "Blended",
    "LabelConsistent",
    "Poisoned",
    "TriggerAttack",
    "WaNet",
    "available",
    "create",
    "train_trojaned",
    "triggered_inputs",
    "trojan_metrics",
]
