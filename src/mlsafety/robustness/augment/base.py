"""The augmentation family: a base class whose :meth:`Augmentation.loss` drops into any training loop.

An augmentation's constructor stores hyper-parameters; ``loss(model, x, y, generator)`` augments the
batch ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), runs the model and returns the training
loss (a scalar with a graph), so a loop needs one line::

    loss = aug.loss(model, xb, yb, g)
    loss.backward()

Randomness comes only from the generator (CPU generators give device-independent results).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import HyperParams, Registry, draw_seed, unwrap_logits


class Augmentation(HyperParams):
    """Base class: declare the hyper-parameters with :class:`~mlsafety.core.Param` (the family kit gives
    the constructor, validation, ``repr`` and ``get_params``), register a name and write :meth:`loss`."""

    name: ClassVar[str]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
register_augmentation = AUGMENTATIONS.register


def available() -> list[str]:
    """Registered augmentation names, sorted."""
    return AUGMENTATIONS.available()


def create(name: str, **params: Any) -> Augmentation:
    """The augmentation ``name`` with hyper-parameters ``params``."""
    return AUGMENTATIONS.create(name, **params)


@register_augmentation("standard")
class Standard(Augmentation):
    """No mixing: plain cross-entropy on the batch as given (the baseline of a comparison)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(unwrap_logits(model(x)), y)


@dataclass(frozen=True)
class MixedBatch:
    """Mixed images with the two label sets and the weight of the first: ``lam y_a + (1 - lam) y_b``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float

    def targets(self, num_classes: int) -> torch.Tensor:
        """Soft targets (N, K)."""
        a = F.one_hot(self.y_a, num_classes).to(self.x.dtype)
        b = F.one_hot(self.y_b, num_classes).to(self.x.dtype)
        return self.lam * a + (1 - self.lam) * b

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the mixed labels (equal to the soft-target cross-entropy)."""
        return self.lam * F.cross_entropy(logits, self.y_a) + (1 - self.lam) * F.cross_entropy(logits, self.y_b)


def numpy_rng(g: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded from ``g`` (for Beta and Dirichlet draws, which torch cannot seed)."""
    return np.random.default_rng(draw_seed(g))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (N, K) whose rows sum to 1."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
