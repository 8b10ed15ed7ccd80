"""Gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2014)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.monitoring.transparency.base import Attribution, input_gradient, register


@register("saliency")
class Saliency(Attribution):
    """The gradient of the target logit with respect to the input.

    Args:
        abs: return the gradient's absolute value (the paper's saliency map); False keeps the sign.
    """

    abs = Param(True, bool, doc="absolute value of the gradient (the paper's map); False keeps the sign")

    def _attribute(self, clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grad = input_gradient(clf, x, target)
        return grad.abs() if self.abs else grad
