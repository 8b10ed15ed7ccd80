"""Warps and moving kernels shared by the blurs and the weather: bilinear sampling at pixel coordinates
(glass blur's shuffles), ImageNet-C's centre zoom, and its one-sided motion blur.

All functions take and return (N, C, H, W) tensors on the input's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample(x: torch.Tensor, px: torch.Tensor, py: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Bilinear samples of ``x`` at pixel coordinates ``(px, py)`` (N, H, W) (pixel centres at integers)."""
    h, w = x.shape[-2:]
    gx = (2 * px + 1) / w - 1
    gy = (2 * py + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def pixel_grid(n: int, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (N, H, W) of every output pixel: ``(px, py)``."""
    ys = torch.arange(h, dtype=like.dtype, device=like.device)
    xs = torch.arange(w, dtype=like.dtype, device=like.device)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    return px.expand(n, h, w), py.expand(n, h, w)


def centre_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """ImageNet-C's ``clipped_zoom``: enlarge the central ``ceil(size / zoom)`` crop by ``zoom`` (linear,
    corners aligned as ``scipy.ndimage.zoom(order=1)``) and keep the top-left ``size`` pixels."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    size = (max(round(ch * zoom), h), max(round(cw * zoom), w))
    if (ch, cw) == (h, w) == size:
        return x  # a zoom of 1: corner-aligned interpolation to the same size is the identity
    crop = x[..., top : top + ch, left : left + cw]
    if not x.is_contiguous(memory_format=torch.channels_last):
        # the CPU bilinear kernel is fastest on channels-last data, even counting this copy
        crop = crop.contiguous(memory_format=torch.channels_last)
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[..., :h, :w]


def motion_blur(x: torch.Tensor, length: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """One-sided motion blur as in ImageNet-C: Gaussian-weighted copies shifted along each image's angle.

    Args:
        x: images (N, C, H, W).
        length: how far the copies reach (pixels); ImageNet-C uses ``2 * radius``.
        sigma: the Gaussian's width (pixels) along the path.
        angles: one angle per image (degrees).
    """
    n, c, h, w = x.shape
    if length < 0.5 or sigma <= 0:
        return x
    taps = max(math.ceil(length) + 1, 2)
    t = torch.linspace(0, length, taps, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    rad = torch.deg2rad(angles.to(x.dtype))
    # integer shifts (as the original), rounded half up: (N, taps)
    dy = torch.ceil(t[None] * torch.sin(rad)[:, None] - 0.5).long()
    dx = torch.ceil(t[None] * torch.cos(rad)[:, None] - 0.5).long()
    offsets = torch.stack([dy, dx], dim=-1).tolist()
    ys = [oy for row in offsets for oy, _ in row]
    xs = [ox for row in offsets for _, ox in row]
    top, left = max(0, -min(ys)), max(0, -min(xs))  # replicated borders only where some copy reaches
    padded = F.pad(x, [left, max(0, max(xs)), top, max(0, max(ys))], mode="replicate")
    weights = k.tolist()
    if h * w >= _SLICE_PIXELS:  # big images: per-image slices are cheaper than a gather over the batch
        out = torch.empty_like(x)
        for i in range(n):
            merged: dict[tuple[int, int], float] = {}  # rounding sends neighbouring taps to one shift
            for (oy, ox), weight in zip(offsets[i], weights):
                merged[oy, ox] = merged.get((oy, ox), 0.0) + weight
            src, dst = padded[i], out[i]
            for j, ((oy, ox), weight) in enumerate(merged.items()):
                shifted = src[:, top + oy : top + oy + h, left + ox : left + ox + w]
                if j == 0:
                    torch.mul(shifted, weight, out=dst)
                else:
                    dst.add_(shifted, alpha=weight)
        return out
    hp, wp = padded.shape[-2:]
    flat = padded.reshape(n, c, hp * wp)
    rows = torch.arange(h, device=x.device)[:, None] + top
    base = (rows * wp + torch.arange(w, device=x.device)[None] + left).view(1, -1)
    out = torch.zeros(n, c, h * w, dtype=x.dtype, device=x.device)
    for j in range(taps):
        idx = (base + (dy[:, j] * wp + dx[:, j])[:, None]).unsqueeze(1).expand(n, c, h * w)
        out.add_(flat.gather(2, idx), alpha=weights[j])
    return out.reshape(n, c, h, w)


_SLICE_PIXELS = 4096
