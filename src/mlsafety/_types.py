"""Type aliases shared across the package."""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import nn

from mlsafety.core._model import Classifier

ModelLike: TypeAlias = "nn.Module | Classifier"
Device: TypeAlias = "torch.device | str"
Tensor: TypeAlias = torch.Tensor

__all__ = ["Device", "ModelLike", "Tensor"]
