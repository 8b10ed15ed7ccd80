"""Goal functions: untargeted and targeted misclassification (TextAttack's classification goals).

Scores are probabilities, so they are comparable across candidates and examples: untargeted
``1 - p(label)`` (as TextAttack's ``UntargetedClassification``), targeted ``p(target)``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mlsafety.core import InputError
from mlsafety.robustness.text._base import GoalFunction


class Untargeted(GoalFunction):
    """Succeeds when the predicted class differs from the true label; score ``1 - p(label)``."""

    name: ClassVar[str] = "untargeted"

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        return 1.0 - logits.float().softmax(dim=-1)[:, label]

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        return logits.argmax(dim=-1) != label


class Targeted(GoalFunction):
    """Succeeds when the predicted class is the target; score ``p(target)``."""

    name: ClassVar[str] = "targeted"
    targeted: ClassVar[bool] = True

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        if target is None:
            raise InputError("a targeted goal needs a target class for every text")
        return logits.float().softmax(dim=-1)[:, target]

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        if target is None:
            raise InputError("a targeted goal needs a target class for every text")
        return logits.argmax(dim=-1) == target
