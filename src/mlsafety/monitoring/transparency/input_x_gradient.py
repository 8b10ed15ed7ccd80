"""Input x gradient (Shrikumar et al., "Not Just a Black Box", 2016)."""

from __future__ import annotations

import torch

from mlsafety.monitoring.transparency.base import IMAGE, TEXT, Attribution, InputSpace, input_gradient, register


@register("input-x-gradient", tags=(IMAGE, TEXT))
class InputXGradient(Attribution):
    """The input times the gradient of the target logit: a first-order contribution of each feature
    relative to an all-zero input. On text a token's score is the dot product of its embedding and
    the gradient there (gradient x input; Denil et al. 2014)."""

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * input_gradient(space, x, target)
