"""Small test images shared by the corruption known-answer tests."""

from __future__ import annotations

import torch


def const(value: float, n: int = 1, c: int = 3, size: int = 64) -> torch.Tensor:
    """A flat batch (n, c, size, size) of ``value``."""
    return torch.full((n, c, size, size), value)


def uint8_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded photo-like images in [0, 1] on the 8-bit grid: smooth structure plus texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = 0.7 * x + 0.3 * torch.rand(n, c, size, size, generator=g)
    return (x * 255).round() / 255
