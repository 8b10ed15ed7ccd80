"""Input x gradient (Shrikumar et al., "Not Just a Black Box", 2016)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier
from mlsafety.monitoring.transparency.base import Attribution, input_gradient, register


@register("input-x-gradient")
class InputXGradient(Attribution):
    """The input times the gradient of the target logit: a first-order contribution of each feature
    relative to an all-zero input."""

    def _attribute(self, clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * input_gradient(clf, x, target)
