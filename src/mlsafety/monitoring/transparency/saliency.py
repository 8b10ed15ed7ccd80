"""Gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2014)."""

from __future__ import annotations

import torch

from mlsafety.core import InputError, Param
from mlsafety.monitoring.transparency.base import IMAGE, TEXT, Attribution, InputSpace, input_gradient, register


@register("saliency", tags=(IMAGE, TEXT))
class Saliency(Attribution):
    """The gradient of the target logit with respect to the input.

    The map keeps the input's shape: the absolute gradient of every channel (as Captum's ``Saliency``).
    Simonyan et al.'s map of a colour image is one value per pixel, the maximum over channels
    (``maps.amax(dim=1)``); the two are the same on one-channel inputs.

    On text the gradient is taken with respect to each token's embedding and a token's score is the
    gradient's L2 norm (Li et al., "Visualizing and Understanding Neural Models in NLP", 2016).

    Args:
        abs: return the gradient's absolute value (the paper's, per channel); False keeps the sign (images only:
            a token's L2 norm has no sign).
    """

    token_reduction = "norm"

    abs = Param(True, bool, doc="absolute value of the gradient (per channel); False keeps the sign")

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if space.is_text and not self.abs:
            raise InputError("saliency on text is the gradient's L2 norm per token; use input-x-gradient for a sign")
        grad = input_gradient(space, x, target)
        return grad.abs() if self.abs else grad
