"""Weather corruptions: snow, frost, fog and spatter.

Snow flakes, frost crystals and spatter droplets are random fields drawn at a working size of at
least :data:`~mlsafety.robustness.corruptions.base.MIN_FIELD` pixels, with their published lengths
scaled to that size, then area-resampled to the image.
"""

from __future__ import annotations

import math

import torch

from mlsafety.robustness.corruptions._filters import (
    box_blur3,
    colour,
    correlate3,
    dilate3_mask,
    field_size,
    gaussian_blur,
    grey,
    indicator,
    next_power_of_two,
    normal,
    rand,
    resize,
    uniform,
    zero_below_,
)
from mlsafety.robustness.corruptions._fractal import plasma_fractal, plasma_raw
from mlsafety.robustness.corruptions._warps import motion_blur
from mlsafety.robustness.corruptions.base import MIN_FIELD, Corruption, register_corruption

FROST_COLOUR = (0.572, 0.656, 0.702)
"""Mean RGB of the five frost photographs ImageNet-C draws from (measured once from its files)."""
FROST_STD = 0.13
"""Their mean pixel standard deviation."""


@register_corruption("snow")
class Snow(Corruption):
    """Falling snow: thresholded, zoomed noise streaked by motion blur, over a whitened image.

    Levels are (mean, std, flake zoom, threshold, streak radius, streak sigma, image weight) at 224 px.
    """

    group = "weather"
    levels = (
        (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    )
    cifar_levels = (
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )
    tiny_levels = (
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.8),
        (0.1, 0.2, 1.0, 0.5, 10, 4, 0.8),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
    )

    def apply(self, x: torch.Tensor, level: tuple[float, ...], g: torch.Generator) -> torch.Tensor:
        loc, std, zoom, thr, radius, sigma, keep = level
        n, _, h, w = x.shape
        fh, fw = field_size(h, w, MIN_FIELD)
        sf = self.scale(x, min(fh, fw))
        z = max(zoom * sf, 1.0)
        layer = resize(normal((n, 1, math.ceil(fh / z), math.ceil(fw / z)), loc, std, g, x), (fh, fw))
        layer = zero_below_(layer, thr).clamp_(0, 1)
        layer = motion_blur(layer, 2 * radius * sf, sigma * sf, uniform((n,), -135.0, -45.0, g, x))
        layer = resize(layer, (h, w))
        flakes = layer + layer.flip(-1, -2)  # one channel: added to every channel below
        # keep * x + (1 - keep) * max(x, 1.5 grey + 0.5), then the flakes: three passes over the image
        out = torch.maximum(x, torch.mul(grey(x), 1.5).add_(0.5)).lerp_(x, keep)
        return out.add_(flakes)


FROST_BANK = 4
"""Textures made per call; each image takes a random crop of one (ImageNet-C crops one of 5 photographs)."""


def frost_texture(n: int, size: tuple[int, int], scale: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Procedural frost (N, 3, H, W) in [0, 1]: ice needles, grain and patchy cover.

    ImageNet-C crops photographs of frost on glass; nothing is downloaded here, so a small bank of
    textures is made from crystals (sparse seeds streaked along several directions), fine grain and
    a plasma fractal for uneven cover, matched to the photographs' mean colour and contrast, and
    each image gets a random crop of one of them.
    """
    bank, crops = _frost_bank(n, size, scale, g, like)
    fh, fw = size
    return torch.stack([bank[j, :, t : t + fh, s : s + fw] for j, t, s in crops])


def streaks(seeds: torch.Tensor, length: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """The brightest of several motion blurs of sparse seeds (K, 1, H, W), one per row of ``angles`` (D, K).

    Each blur is :func:`~mlsafety.robustness.corruptions._warps.motion_blur` (the same integer
    shifts and Gaussian weights) with nothing beyond the borders instead of replicated borders; it is
    computed by scattering each seed's weighted copies, a few thousand entries instead of a pass over
    the planes per shift.
    """
    k, _, h, w = seeds.shape
    if length < 0.5 or sigma <= 0:
        return seeds.clone()
    taps = max(math.ceil(length) + 1, 2)
    t = torch.linspace(0, length, taps, dtype=seeds.dtype, device=seeds.device)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = weights / weights.sum()
    rad = torch.deg2rad(angles.to(seeds.dtype))[..., None]  # (D, K, 1)
    dy = torch.ceil(t * torch.sin(rad) - 0.5).long()  # (D, K, taps), rounded half up as motion_blur
    dx = torch.ceil(t * torch.cos(rad) - 0.5).long()
    b, ys, xs = seeds[:, 0].nonzero(as_tuple=True)
    # the copy of a seed shifted by (dy, dx) lands on the pixel that reads it: (y - dy, x - dx)
    ty, tx = ys[None, :, None] - dy[:, b], xs[None, :, None] - dx[:, b]  # (D, seeds, taps)
    directions = angles.shape[0]
    d = torch.arange(directions, device=seeds.device)[:, None, None]
    index = ((d * k + b[None, :, None]) * h + ty) * w + tx
    outside = (ty < 0) | (ty >= h) | (tx < 0) | (tx >= w)
    index.masked_fill_(outside, directions * k * h * w)  # copies beyond the borders land in one spare entry
    values = (seeds[b, 0, ys, xs][None, :, None] * weights).expand(ty.shape)
    flat = seeds.new_zeros(directions * k * h * w + 1).scatter_add_(0, index.reshape(-1), values.reshape(-1))
    return flat[:-1].view(directions, k, h, w).amax(dim=0).unsqueeze(1)


_COVER_SIDE = 64
"""The frost cover's fractal is drawn on at most 64 x 64 points and enlarged bilinearly (see :func:`_frost_bank`)."""


def _frost_bank(
    n: int, size: tuple[int, int], scale: float, g: torch.Generator, like: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """The texture bank (K, 3, H + H // 4, W + W // 4) and, per image, (texture, top, left) of its crop."""
    fh, fw = size
    bh, bw = fh + fh // 4, fw + fw // 4
    k = min(n, FROST_BANK)
    # needles are smooth, so they are drawn at half resolution (a quarter of the work) and enlarged
    nh, nw = max(bh // 2, 1), max(bw // 2, 1)
    seeds = (rand((k, 1, nh, nw), g, like) < 0.02).to(like.dtype) * uniform((k, 1, nh, nw), 0.5, 1.0, g, like)
    angles = torch.stack([uniform((k,), -180.0, 180.0, g, like) for _ in range(4)])  # four directions each
    needles = resize(streaks(seeds, 12 * scale, 5 * scale, angles), (bh, bw))
    needles = needles / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    grain = gaussian_blur(rand((k, 1, bh, bw), g, like), 0.7 * scale)
    # Patchy cover: a diamond-square fractal with roughness 2 over the next power of two. With
    # roughness 2 each level's displacements are a quarter of the previous level's, so the levels
    # after the first six (a 64 x 64 map) add under 3.3e-4 of the first level's displacement together
    # and otherwise only interpolate: the first six levels are drawn (at 224 px, 1/64 of the samples)
    # and enlarged bilinearly, corners aligned with the full map's grid.
    full = next_power_of_two(max(bh, bw))
    step = max(full // _COVER_SIDE, 1)
    coarse = plasma_fractal(k, full // step, 2.0, g, like)[:, None]
    ch, cw = math.ceil((bh - 1) / step) + 1, math.ceil((bw - 1) / step) + 1
    coarse = coarse[:, :, : min(ch, full // step), : min(cw, full // step)]
    cover = torch.nn.functional.interpolate(
        coarse,
        size=((coarse.shape[2] - 1) * step + 1, (coarse.shape[3] - 1) * step + 1),
        mode="bilinear",
        align_corners=True,
    )
    cover = resize(cover, (max(cover.shape[2], bh), max(cover.shape[3], bw)))[:, :, :bh, :bw]
    tex = torch.add(cover, needles.sqrt_(), alpha=0.35 / 0.45).add_(grain, alpha=0.2 / 0.45)  # / 0.45: scale-free
    flat = tex.view(k, -1)  # mean and (unbiased) deviation by two plain passes: torch.std is slow on the CPU
    mu = flat.mean(dim=1)
    sd = (flat - mu[:, None]).pow_(2).sum(dim=1).div_(max(flat.shape[1] - 1, 1)).sqrt_()
    sd, mu = sd.view(k, 1, 1, 1), mu.view(k, 1, 1, 1)
    mean = sum(FROST_COLOUR) / 3
    tint = torch.tensor(FROST_COLOUR, dtype=like.dtype, device=like.device).view(1, 3, 1, 1) / mean
    # (mean + FROST_STD * (tex - mu) / sd) * tint, clipped to [0, 1], as one multiply-add per pixel
    gain = tint * (FROST_STD / sd.clamp_min(1e-6))  # (k, 3, 1, 1)
    bank = torch.addcmul(tint * mean - gain * mu, tex, gain).clamp_(0, 1)  # (k, 3, bh, bw)
    pick = torch.randint(0, k, (n,), generator=g, device=g.device).tolist()
    top = torch.randint(0, bh - fh + 1, (n,), generator=g, device=g.device).tolist()
    left = torch.randint(0, bw - fw + 1, (n,), generator=g, device=g.device).tolist()
    return bank, list(zip(pick, top, left))


@register_corruption("frost")
class Frost(Corruption):
    """``a * x + b * frost`` with a procedural frost texture; levels are (a, b)."""

    group = "weather"
    levels = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
    cifar_levels = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
    tiny_levels = ((1.0, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55))

    def apply(self, x: torch.Tensor, level: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        a, b = level
        fh, fw = field_size(h, w, MIN_FIELD)
        scale = self.scale(x, min(fh, fw))
        if (fh, fw) != (h, w):  # small images: the texture is made at the working size and shrunk
            tex = resize(frost_texture(n, (fh, fw), scale, g, x), (h, w))
            return a * x + b * (grey(tex) if c == 1 else tex)
        bank, crops = _frost_bank(n, (h, w), scale, g, x)
        bank = (grey(bank) if c == 1 else bank).mul_(b)
        out = torch.empty_like(x)
        for i, (j, t, s) in enumerate(crops):  # each image's crop read straight from the bank, in one pass
            torch.add(bank[j, :, t : t + h, s : s + w], x[i], alpha=a, out=out[i])
        return out


@register_corruption("fog")
class Fog(Corruption):
    """A diamond-square plasma fractal added and the range compressed; levels are (strength, roughness).

    The fractal is made at the next power of two of the image's longer side, as in ImageNet-C; its
    coarse levels dominate, so it looks the same at every size.
    """

    group = "weather"
    levels = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
    cifar_levels = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
    tiny_levels = ((0.4, 3.0), (0.7, 3.0), (1.0, 2.5), (1.5, 2.0), (2.0, 1.75))

    def apply(self, x: torch.Tensor, level: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        strength, decay = level
        m = plasma_raw(n, next_power_of_two(max(h, w)), decay, g, x)
        flat = m.view(n, -1)  # the fractal is scaled to [0, 1] over the whole map (aminmax(dim=...) is slow)
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        top = x.amax(dim=(1, 2, 3))
        a = top / (top + strength)  # (x + strength * fog) * a with fog = (m - lo) / (hi - lo), in one pass
        b = strength * a / (hi - lo).clamp_min(1e-12)
        fog = torch.addcmul((-lo * b).view(n, 1, 1, 1), m[:, None, :h, :w], b.view(n, 1, 1, 1))
        return torch.addcmul(fog, x, a.view(n, 1, 1, 1))


_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))
_WATER = (175 / 255, 238 / 255, 238 / 255)
_MUD = (63 / 255, 42 / 255, 20 / 255)


def edge_distance(wet: torch.Tensor, reach: int, dtype: torch.dtype) -> torch.Tensor:
    """Chessboard distance of every pixel to the nearest droplet edge, truncated at ``reach``.

    ``wet`` is a boolean mask (N, 1, H, W); edge pixels are those whose 3x3 neighbourhood (inside the
    image) holds both wet and dry pixels. The distance is the sum over ``t < reach`` of "not within
    ``t`` 3x3 dilations of the edge", counted on boolean masks in ``uint8``.
    """
    grown = dilate3_mask(wet) & dilate3_mask(~wet)  # dilation minus erosion: the mixed neighbourhoods
    rows = torch.empty_like(grown)  # the two buffers of the in-place dilations (no allocation per step)
    count = torch.zeros(grown.shape, dtype=torch.uint8, device=wet.device)
    for t in range(reach):
        count += grown
        if t + 1 < reach:  # 3x3 dilation: along columns into rows, then along rows back into grown
            rows.copy_(grown)
            rows[..., 1:, :] |= grown[..., :-1, :]
            rows[..., :-1, :] |= grown[..., 1:, :]
            grown.copy_(rows)
            grown[..., 1:] |= rows[..., :-1]
            grown[..., :-1] |= rows[..., 1:]
    return torch.sub(reach, count, out=torch.empty(grown.shape, dtype=dtype, device=wet.device))


@register_corruption("spatter")
class Spatter(Corruption):
    """Water drops (severities 1-3) or mud (4-5) on the lens (an extra corruption).

    Levels are (mean, std, sigma, threshold, intensity, mud) at 224 px. For water, ImageNet-C runs
    OpenCV's Canny edges, distance transform and histogram equalisation on the droplet mask; here the
    distance to the droplet edge (truncated at 20 px, scaled) comes from repeated 3x3 dilation and the
    equalisation is a division by the maximum, followed by the same emboss kernel and 3x3 blurs.
    """

    group = "weather"
    extra = True
    levels = (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    )
    cifar_levels = (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    )
    tiny_levels = (
        (0.62, 0.1, 0.7, 0.7, 0.6, 0),
        (0.65, 0.1, 0.8, 0.7, 0.6, 0),
        (0.65, 0.3, 1, 0.69, 0.6, 0),
        (0.65, 0.1, 0.7, 0.68, 0.6, 1),
        (0.65, 0.1, 0.5, 0.67, 0.6, 1),
    )

    def apply(self, x: torch.Tensor, level: tuple[float, ...], g: torch.Generator) -> torch.Tensor:
        loc, std, sigma, thr, intensity, mud = level
        n, c, h, w = x.shape
        fh, fw = field_size(h, w, MIN_FIELD)
        sf = self.scale(x, min(fh, fw))
        liquid = gaussian_blur(normal((n, 1, fh, fw), loc, std, g, x), sigma * sf)
        if mud:
            m = gaussian_blur(indicator(liquid, thr), intensity * sf)
            m = resize(zero_below_(m, 0.8), (h, w))
            return torch.lerp(x, colour(_MUD, c, x), m)  # x (1 - m) + mud m
        zero_below_(liquid, thr)
        dist = box_blur3(edge_distance(liquid > 0, max(round(20 * sf), 1), x.dtype))
        dist = dist / dist.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6) * 255
        dist = correlate3(dist, _EMBOSS).clamp_(0, 255)
        dist = box_blur3(dist)
        m = liquid.mul_(dist)
        m = resize(m.mul_(intensity / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)), (h, w))
        if c == 3:  # x + min(m * water, 1) is x + m * water once clipped to [0, 1], since x, m >= 0
            return torch.addcmul(x, m, colour(_WATER, 3, x))
        return x + grey((m * colour(_WATER, 3, x)).clamp_(0, 1))
