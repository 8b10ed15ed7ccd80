"""AugMix's operations in torch, batched with one random strength per image.

The list is AugMix's ``augmentations`` (Hendrycks et al., 2020): autocontrast, equalize, posterize,
rotate, solarize, shear and translate. Colour, contrast, brightness and sharpness are left out on
purpose, as in the paper, so training does not see the test corruptions. Strengths follow the
paper's ``level`` in [0.1, severity] on a scale of 10.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""An operation ``op(x, level, sign)``: images (n, C, H, W), levels (n,), random signs (n,) of +-1."""


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def autocontrast(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full range [0, 1]."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel over 256 levels: ``(cdf - cdf_min) / (n - cdf_min)``.

    OpenCV's convention. AugMix's code calls Pillow's ``ImageOps.equalize``, which maps by the count
    below each level over ``(n - count of the top level) // 255`` and so leaves channels of fewer
    than 256 pixels (15 x 15 and smaller) unchanged; on 32 x 32 images the two differ by up to about
    60 of 255 levels.
    """
    n, c, h, w = x.shape
    q = (x * 255).round().long().clamp(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=x.dtype, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=x.dtype))
    cdf = hist.cumsum(dim=1)
    first = torch.gather(cdf, 1, (hist > 0).to(torch.int64).argmax(dim=1, keepdim=True))
    lut = ((cdf - first) / (h * w - first).clamp_min(1)).clamp(0, 1)
    return torch.gather(lut, 1, q).reshape(n, c, h, w)


def posterize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Keep ``4 - int(level * 4 / 10)`` bits of each 8-bit value."""
    bits = 4 - (level * 4 / 10).long()
    step = _col(2.0 ** (8 - bits)).to(x.dtype)
    return torch.floor((x * 255).round() / step) * step / 255


def solarize(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Invert values at or above ``256 - level * 256 / 10`` (of 255)."""
    thr = _col((256 - level * 256 / 10) / 255).to(x.dtype)
    return torch.where(x >= thr, 1 - x, x)


def _warp(
    x: torch.Tensor, src: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    n, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype, device=x.device)
    xs = torch.arange(w, dtype=x.dtype, device=x.device)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = src(px.expand(n, h, w), py.expand(n, h, w))
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Rotate about the centre by up to 30 degrees."""
    a = (sign * level * 30 / 10 * math.pi / 180).to(x.dtype).view(-1, 1, 1)
    cy, cx = (x.shape[2] - 1) / 2, (x.shape[3] - 1) / 2
    cos, sin = torch.cos(a), torch.sin(a)
    return _warp(x, lambda px, py: (cos * (px - cx) - sin * (py - cy) + cx, sin * (px - cx) + cos * (py - cy) + cy))


def shear_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    s = (sign * level * 0.3 / 10).to(x.dtype).view(-1, 1, 1)
    return _warp(x, lambda px, py: (px + s * py, py))


def shear_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    s = (sign * level * 0.3 / 10).to(x.dtype).view(-1, 1, 1)
    return _warp(x, lambda px, py: (px, py + s * px))


def translate_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Shift by up to a third of the width."""
    t = (sign * level * (x.shape[3] / 3) / 10).to(x.dtype).view(-1, 1, 1)
    return _warp(x, lambda px, py: (px + t, py))


def translate_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    t = (sign * level * (x.shape[2] / 3) / 10).to(x.dtype).view(-1, 1, 1)
    return _warp(x, lambda px, py: (px, py + t))


OPS: tuple[Op, ...] = (
    autocontrast,
    equalize,
    posterize,
    rotate,
    solarize,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)


def random_ops(x: torch.Tensor, choice: torch.Tensor, severity: float, g: torch.Generator) -> torch.Tensor:
    """Apply ``OPS[choice[i]]`` to image i (``choice`` -1: unchanged) with a random level and sign."""
    n = x.shape[0]
    level = (0.1 + (severity - 0.1) * torch.rand(n, generator=g, device=g.device)).to(x.device)
    sign = torch.where(torch.rand(n, generator=g, device=g.device) < 0.5, -1.0, 1.0).to(x.device)
    choice = choice.to(x.device)
    out = x.clone()
    for k, op in enumerate(OPS):
        idx = torch.nonzero(choice == k).flatten()
        if idx.numel():
            out[idx] = op(x[idx], level[idx], sign[idx]).clamp(0, 1)
    return out
