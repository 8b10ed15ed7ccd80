"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

Per-pixel noise has no length, so the published levels apply at every image size.
"""

from __future__ import annotations

import functools
import math

import torch

from mlsafety.robustness.corruptions._filters import rand, randn
from mlsafety.robustness.corruptions.base import Corruption, register_corruption


@register_corruption("gaussian-noise")
class GaussianNoise(Corruption):
    """``x + N(0, c^2)`` per pixel and channel, then clipped; ``c`` is the standard deviation."""

    group = "noise"
    levels = (0.08, 0.12, 0.18, 0.26, 0.38)
    cifar_levels = (0.04, 0.06, 0.08, 0.09, 0.10)
    tiny_levels = (0.04, 0.08, 0.12, 0.15, 0.18)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        noise = randn(tuple(x.shape), g, x)
        return torch.add(x, noise, alpha=level, out=noise)  # one pass, in the noise's buffer


@register_corruption("shot-noise")
class ShotNoise(Corruption):
    """Photon noise: ``Poisson(c * x) / c``; ``c`` is the photon count of a white pixel.

    Sampled exactly by :func:`poisson_counts` (table inversion), from the passed generator only.
    """

    group = "noise"
    levels = (60.0, 25.0, 12.0, 5.0, 3.0)
    cifar_levels = (500.0, 250.0, 100.0, 75.0, 50.0)
    tiny_levels = (250.0, 100.0, 50.0, 30.0, 15.0)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        return poisson_counts(x, level, g).div_(level)


_GRID = 255
"""Rates ``c * j / _GRID`` (j = 0.._GRID) have inversion tables; 8-bit images hit them exactly."""

_GUIDE_BITS = 10
_GUIDE = 1 << _GUIDE_BITS
"""Guide-table buckets per rate (Chen & Asau 1974): most buckets hold no CDF step and give the count at once."""

_SNAP = 1e-4
"""``x`` within ``_SNAP / _GRID`` below a grid level counts as on it (float rounding of ``j / 255``)."""


@functools.lru_cache(maxsize=32)
def _poisson_tables(scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inversion tables for Poisson rates ``scale * j / _GRID``, j = 0.._GRID (flattened CPU tensors).

    ``cdf`` (rows x K, float32 like the uniforms it is compared with, so probabilities are resolved to
    2^-24; the last entry of each row is 2 so every search stops there, absorbing a tail below 1e-12)
    and ``count`` (the count of each ``cdf`` entry). For uniform ``u`` in bucket
    ``[m, m + 1) / _GUIDE`` of row j the inverse ``min{k: cdf[k] > u}`` lies in ``[lo, hi]``:
    ``guide[j, m]`` is the count when ``lo == hi``, else ``-1 - (flat index of lo)``, and ``upper[j, m]``
    is the flat index of ``hi``.
    """
    k_max = int(scale + 12 * math.sqrt(scale) + 30)
    k = torch.arange(k_max, dtype=torch.float64)
    rates = torch.arange(_GRID + 1, dtype=torch.float64) * (scale / _GRID)
    log_pmf = k * torch.log(rates[:, None].clamp_min(1e-300)) - rates[:, None] - torch.lgamma(k + 1)
    log_pmf[0] = -math.inf  # rate 0: always 0
    log_pmf[0, 0] = 0.0
    cdf = torch.exp(log_pmf).cumsum(dim=1).clamp_max(1.0).float()
    cdf[:, -1] = 2.0
    edges = torch.arange(_GUIDE + 1, dtype=torch.float32).div(_GUIDE)
    lo = torch.searchsorted(cdf, edges[:-1].expand(_GRID + 1, -1).contiguous(), right=True)  # first cdf > m / G
    hi = torch.searchsorted(cdf, edges[1:].expand(_GRID + 1, -1).contiguous())  # first cdf >= (m + 1) / G
    row = torch.arange(_GRID + 1)[:, None] * k_max
    guide = torch.where(lo == hi, lo.float(), -1.0 - (lo + row).float())
    return cdf.flatten(), k.float().repeat(_GRID + 1), guide.flatten(), (hi + row).flatten()


def poisson_counts(x: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
    """Exact Poisson samples with rates ``scale * x`` (x in [0, 1], any shape) as a float tensor like ``x``.

    Inversion of the CDF with one uniform per value (24 random bits): ``Poisson(scale * j / 255)``,
    ``j = floor(255 x)``, by a guide table (Chen & Asau 1974) over cached CDF tables, a binary search
    where a bucket holds a CDF step; plus ``Poisson(r)`` for the remainder ``r = scale * (x - j / 255)`` (zero for 8-bit
    images) by sequential search from 0 with a second uniform (a sum of independent Poisson variables
    is Poisson). Uniforms are drawn on ``g``'s device and moved, so a CPU generator gives the same
    samples on every device.
    """
    tables = tuple(t.to(x.device) for t in _poisson_tables(float(scale)))
    flat = x.reshape(-1)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), _CHUNK):  # chunks keep the temporaries in cache, the heap small
        out[start : start + _CHUNK] = _poisson_chunk(flat[start : start + _CHUNK], scale, g, tables)
    return out.view(x.shape)


_CHUNK = 1 << 18
"""Values per step of :func:`poisson_counts`."""


def _poisson_chunk(
    flat: torch.Tensor, scale: float, g: torch.Generator, tables: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """:func:`poisson_counts` on a 1-D chunk, with the device's copy of :func:`_poisson_tables`."""
    cdf, count, guide, upper = tables
    # one uniform per value as 24 random bits (u = bits / 2^24): the top 10 pick the guide bucket
    bits = torch.randint(0, 1 << 24, (flat.numel(),), generator=g, device=g.device, dtype=torch.int32)
    bits = bits.to(flat.device)
    pos = flat.mul(_GRID).add_(_SNAP)  # 255 x; a hair below j counts as j (float rounding of j / 255)
    level = pos.int()  # j = floor(255 x), x in [0, 1]
    slot = torch.bitwise_right_shift(bits, 24 - _GUIDE_BITS).add_(level, alpha=_GUIDE)  # (j, bucket of u)
    out = guide.index_select(0, slot)
    search = (out < 0).nonzero().squeeze(1)
    if search.numel():
        slot_s = slot.index_select(0, search)
        lo = out.index_select(0, search).neg_().sub_(1).long()
        hi = upper.index_select(0, slot_s)
        u_s = bits.index_select(0, search).to(cdf.dtype).mul_(2.0**-24)
        for _ in range(int(hi.sub(lo).max()).bit_length()):
            mid = lo.add(hi).div_(2, rounding_mode="floor")
            above = cdf.index_select(0, mid) > u_s
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid + 1)
        out.index_copy_(0, search, count.index_select(0, lo))
    frac = pos.sub_(level)  # 255 x - j + _SNAP
    has_rest = frac > _SNAP + _GRID * 1e-6  # below: float rounding of an 8-bit value
    if bool(has_rest.any()):
        rest = frac.sub_(_SNAP).mul_(scale / _GRID).masked_fill_(~has_rest, 0.0)
        out = out.to(flat.dtype).add_(_small_poisson(rest, g))
    return out


def _small_poisson(rates: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Poisson samples for small rates (below 1) by sequential inversion from 0, one uniform per value.

    The first step (is the count 0?) runs on every value; the rare larger counts continue in float64
    on the values that need them, until the CDF passes the uniform or the pmf underflows.
    """
    u = rand(tuple(rates.shape), g, rates)
    pmf = torch.exp(-rates)
    k = (u >= pmf).to(rates.dtype)
    todo = k.nonzero().squeeze(1)
    if not todo.numel():
        return k
    r = rates.index_select(0, todo).double()
    u_t = u.index_select(0, todo).double()
    pmf_t = torch.exp(-r)
    cdf_t = pmf_t.clone()
    steps = torch.zeros_like(r)
    live = torch.arange(todo.numel(), device=r.device)
    step = 0
    while live.numel():
        step += 1
        pmf_l = pmf_t.index_select(0, live).mul_(r.index_select(0, live)).div_(step)
        cdf_l = cdf_t.index_select(0, live).add_(pmf_l)
        pmf_t.index_copy_(0, live, pmf_l)
        cdf_t.index_copy_(0, live, cdf_l)
        steps.index_fill_(0, live, float(step))
        live = live[(cdf_l <= u_t.index_select(0, live)) & (pmf_l > 0)]  # pmf 0: underflow, a mass below 1e-300
    return k.index_copy_(0, todo, steps.to(k.dtype))


@register_corruption("impulse-noise")
class ImpulseNoise(Corruption):
    """Salt and pepper: each pixel value (per channel) is set to 0 or 1, half each, with probability ``c``.

    As scikit-image's ``random_noise(mode="s&p", amount=c)`` that ImageNet-C calls. Sampled by
    :func:`bernoulli_positions`: about ``c`` uniforms per value rather than one.
    """

    group = "noise"
    levels = (0.03, 0.06, 0.09, 0.17, 0.27)
    cifar_levels = (0.01, 0.02, 0.03, 0.05, 0.07)
    tiny_levels = (0.01, 0.02, 0.05, 0.08, 0.14)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        positions, salt = bernoulli_positions(x.numel(), level, g, x)
        out = x.clone()
        return out.view(-1).index_put_((positions,), salt).view(x.shape)


def bernoulli_positions(n: int, p: float, g: torch.Generator, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (increasing, on ``like``'s device) where ``n`` independent Bernoulli(``p``) trials succeed,
    and a fair coin (0 or 1 in ``like``'s dtype) for each.

    The gaps between successes of a Bernoulli process are independent geometric variables, sampled by
    inversion: ``floor(log(v) / log(1 - p))`` failures before each success, ``v`` uniform on (0, 1].
    Each uniform ``u`` also gives the coin: ``u < 1/2``, and ``v = 1 - frac(2 u)`` is uniform and
    independent of it (one bit of ``u``'s resolution less). Uniforms (``like``'s dtype) come from ``g`` on
    its device, in batches until the trials are covered.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    log_q = math.log1p(-p)
    parts, coins, end = [], [], 0
    while end < n:
        remaining = n - end
        draw = int(remaining * p + 6 * math.sqrt(remaining * p) + 16)
        u = rand((draw,), g, like).mul_(2)
        coin = u < 1
        log_v = u.frac_().neg_().log1p_()  # log(1 - frac(2 u)): v = 1 - frac(2 u) lies in (0, 1]
        gaps = log_v.mul_(1 / log_q).floor_().clamp_(max=n).long().add_(1)  # failures + the success
        pos = gaps.cumsum_(0).add_(end - 1)
        parts.append(pos)
        coins.append(coin)
        end = int(pos[-1]) + 1
    positions = torch.cat(parts) if len(parts) > 1 else parts[0]
    keep = int(torch.searchsorted(positions, n))  # successes inside the n trials
    coin = torch.cat(coins) if len(coins) > 1 else coins[0]
    salt = coin[:keep].to(device=like.device, dtype=like.dtype)
    return positions[:keep].to(like.device), salt


@register_corruption("speckle-noise")
class SpeckleNoise(Corruption):
    """Multiplicative noise ``x + x * N(0, c^2)`` (an extra corruption)."""

    group = "noise"
    extra = True
    levels = (0.15, 0.2, 0.35, 0.45, 0.6)
    cifar_levels = (0.06, 0.1, 0.12, 0.16, 0.2)
    tiny_levels = (0.15, 0.2, 0.25, 0.3, 0.35)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        noise = randn(tuple(x.shape), g, x)
        return torch.addcmul(x, x, noise, value=level, out=noise)  # x + c x n in one pass
