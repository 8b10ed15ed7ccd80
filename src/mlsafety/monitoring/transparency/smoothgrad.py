"""SmoothGrad and its variants: gradients averaged over noisy copies of the input.

Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017 (``smoothgrad``, and the squared
variant ``smoothgrad-sq``); Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack
Sensitivity to Parameter Values", 2018 (``vargrad``, the variance of the noisy gradients).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mlsafety.core import Param, generator, randn_like
from mlsafety.monitoring.transparency.base import IMAGE, TEXT, Attribution, InputSpace, input_gradient, register


class _NoisyGradients(Attribution):
    """Gradients at ``n_samples`` copies ``x + N(0, sigma^2)``, ``sigma = stdev * (max(x) - min(x))``,
    reduced as :attr:`reduction` says (mean, mean square or variance).

    Args:
        n_samples: noisy copies per input.
        stdev: the paper's noise level: the noise standard deviation as a fraction of each input's
            value range ``max - min`` (over its pixels or features; for text, over its real tokens'
            embedding values), as Smilkov et al. define it (they recommend 10-20%).
        batch_size: noisy copies per backward pass (bounds memory for large inputs).
        seed: seed of the noise generator.
    """

    reduction: ClassVar[str] = "mean"

    n_samples = Param(25, int, low=1, doc="noisy copies per input")
    stdev = Param(0.15, float, low=0, doc="noise standard deviation as a fraction of each input's max - min")
    batch_size = Param(256, int, low=1, store=False, doc="noisy copies per backward pass")
    seed = Param(0, int, doc="seed of the noise generator")

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = generator(self.seed, self.name)
        sigma = space.scale(x) * self.stdev  # (N,)
        view = (-1,) + (1,) * (x.ndim - 1)
        total = torch.zeros_like(x)
        total_sq = torch.zeros_like(x)
        n, m = x.shape[0], self.n_samples
        for start in range(0, n * m, self.batch_size):
            owner = torch.arange(start, min(start + self.batch_size, n * m), device=x.device) // m
            clean = x[owner]
            noisy = clean + randn_like(clean, g) * sigma[owner].view(view)
            grad = input_gradient(space, noisy, target[owner], owner)
            total.index_add_(0, owner, grad)
            total_sq.index_add_(0, owner, grad * grad)
        mean, mean_sq = total / m, total_sq / m
        if self.reduction == "sq":
            return mean_sq
        if self.reduction == "var":
            return (mean_sq - mean * mean).clamp_min(0)
        return mean


@register("smoothgrad", tags=(IMAGE, TEXT))
class SmoothGrad(_NoisyGradients):
    """Mean gradient over noisy copies of the input (on text: its L2 norm per token)."""

    token_reduction = "norm"


@register("smoothgrad-sq", tags=(IMAGE, TEXT))
class SmoothGradSquared(_NoisyGradients):
    """Mean squared gradient over noisy copies of the input (on text: summed over a token's embedding)."""

    reduction = "sq"


@register("vargrad", tags=(IMAGE, TEXT))
class VarGrad(_NoisyGradients):
    """Variance of the gradient over noisy copies of the input (on text: summed over a token's embedding)."""

    reduction = "var"
