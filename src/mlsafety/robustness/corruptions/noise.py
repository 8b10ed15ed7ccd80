"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

Per-pixel noise has no length, so the published levels apply at every image size.
"""

from __future__ import annotations

import torch

from mlsafety.robustness.corruptions._filters import rand, randn
from mlsafety.robustness.corruptions.base import Corruption, register_corruption


@register_corruption("gaussian-noise")
class GaussianNoise(Corruption):
    """``x + N(0, c^2)`` per pixel and channel, then clipped; ``c`` is the standard deviation."""

    group = "noise"
    levels = (0.08, 0.12, 0.18, 0.26, 0.38)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        return x + level * randn(tuple(x.shape), g, x)


@register_corruption("shot-noise")
class ShotNoise(Corruption):
    """Photon noise: ``Poisson(c * x) / c``; ``c`` is the photon count of a white pixel."""

    group = "noise"
    levels = (60.0, 25.0, 12.0, 5.0, 3.0)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        rates = (x * level).to(g.device)
        return torch.poisson(rates, generator=g).to(x.device) / level


@register_corruption("impulse-noise")
class ImpulseNoise(Corruption):
    """Salt and pepper: each pixel value (per channel) is set to 0 or 1, half each, with probability ``c``.

    As scikit-image's ``random_noise(mode="s&p", amount=c)`` that ImageNet-C calls.
    """

    group = "noise"
    levels = (0.03, 0.06, 0.09, 0.17, 0.27)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        # one uniform draw per value: u < c flips it, and given a flip u / c is uniform, so u < c / 2 is salt
        u = rand(tuple(x.shape), g, x)
        out = torch.where(u < level / 2, torch.ones_like(x), x)
        return torch.where((u >= level / 2) & (u < level), torch.zeros_like(x), out)


@register_corruption("speckle-noise")
class SpeckleNoise(Corruption):
    """Multiplicative noise ``x + x * N(0, c^2)`` (an extra corruption)."""

    group = "noise"
    extra = True
    levels = (0.15, 0.2, 0.35, 0.45, 0.6)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        return x + x * level * randn(tuple(x.shape), g, x)
