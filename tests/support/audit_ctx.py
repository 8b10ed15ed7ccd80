"""An audit context with hazards handed in, and a tiny 3-class 8x8 classifier with its data: what the
defence-in-depth and systemic check tests build their cases from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsafety.audit import AuditContext
from mlsafety.core import ArrayDataset, Classifier, Hazard

CLASSES = 3


class ExtraContext(AuditContext):
    """An audit context with extra hazards given as datasets (what another check's provider would make)."""

    def __init__(self, *args: Any, extra: dict[Hazard, ArrayDataset], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.extra = extra
        self.planned_hazards = list(extra)

    def hazard(self, hazard: Hazard | str) -> ArrayDataset:
        h = Hazard.parse(hazard)
        return self.extra[h] if h in self.extra else super().hazard(h)


def tiny_model() -> Classifier:
    """A seeded MLP over 1x8x8 inputs with :data:`CLASSES` outputs, in eval mode."""
    torch.manual_seed(0)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval())


def tiny_data(n: int, g: torch.Generator, label: int | None = None) -> ArrayDataset:
    """``n`` random 1x8x8 inputs, labels random (or all ``label``)."""
    y = torch.randint(0, CLASSES, (n,), generator=g) if label is None else torch.full((n,), label)
    return ArrayDataset(torch.rand(n, 1, 8, 8, generator=g), y)
