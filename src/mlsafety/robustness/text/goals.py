"""Goal functions: untargeted and targeted misclassification (TextAttack's classification goals).

Scores are probabilities, so they are comparable across candidates and examples: untargeted
``1 - p(label)`` (as TextAttack's ``UntargetedClassification``), targeted ``p(target)``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mlsafety.core import InputError
from mlsafety.robustness.text._base import GoalFunction


def class_of(logits: torch.Tensor, c: int, what: str) -> int:
    """``c`` checked against the logits' ``K`` classes (one :class:`InputError` line, not an IndexError or, for a
    negative ``c``, the last class read silently); :meth:`Attack.attack` checks before any query when it knows K."""
    k = logits.shape[-1]
    if not 0 <= c < k:
        raise InputError(f"{what} {c} is not a class of this {k}-class model; give {what}s in 0..{k - 1}")
    return c


class Untargeted(GoalFunction):
    """Succeeds when the predicted class differs from the true label; score ``1 - p(label)``."""

    name: ClassVar[str] = "untargeted"

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        return 1.0 - logits.float().softmax(dim=-1)[:, class_of(logits, label, "label")]

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        return logits.argmax(dim=-1) != class_of(logits, label, "label")


class Targeted(GoalFunction):
    """Succeeds when the predicted class is the target; score ``p(target)``.

    A text whose target is its true class meets the goal before any change: it is skipped, as in TextAttack
    (``TargetedClassification`` counts the goal complete when ``ground_truth_output == target_class``).
    """

    name: ClassVar[str] = "targeted"
    targeted: ClassVar[bool] = True

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        if target is None:
            raise InputError("a targeted goal needs a target class for every text")
        return logits.float().softmax(dim=-1)[:, class_of(logits, target, "target")]

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        if target is None:
            raise InputError("a targeted goal needs a target class for every text")
        return logits.argmax(dim=-1) == class_of(logits, target, "target")
