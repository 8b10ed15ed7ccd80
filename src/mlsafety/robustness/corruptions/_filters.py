"""Batched image operations shared by the corruptions: sampling, thresholds, colour, resampling, filters.

Warps and the motion-blur kernel are in :mod:`._warps`, the plasma fractal in :mod:`._fractal`.

All functions take and return (N, C, H, W) tensors on the input's device; random samples are
drawn on the generator's device and moved (so CPU generators give device-independent results).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA = (0.2989, 0.5870, 0.1140)
"""RGB weights of ``rgb2gray`` as ImageNet-C uses them."""


# -- sampling ------------------------------------------------------------------------------------
def rand(shape: tuple[int, ...], g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) samples of ``shape`` with ``like``'s dtype and device."""
    return torch.rand(shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)


def randn(shape: tuple[int, ...], g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal samples of ``shape`` with ``like``'s dtype and device."""
    return torch.randn(shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)


def normal(shape: tuple[int, ...], mean: float, std: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Normal samples ``mean + std * randn`` of ``shape`` with ``like``'s dtype and device, in one pass."""
    out = torch.empty(shape, device=g.device, dtype=like.dtype).normal_(mean, std, generator=g)
    return out.to(like.device)


def uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * rand(shape, g, like)


# -- thresholds ----------------------------------------------------------------------------------
def zero_below_(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x[x < threshold] = 0`` in place, as one ``threshold_`` pass (``masked_fill_`` with a mask is
    many times slower on the CPU): values at or above ``threshold`` (in ``x``'s dtype) are kept."""
    below = torch.nextafter(torch.tensor(threshold, dtype=x.dtype), torch.tensor(-math.inf, dtype=x.dtype))
    return F.threshold(x, float(below), 0.0, inplace=True)


def indicator(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(x > threshold)`` as 0.0 / 1.0 in ``x``'s dtype, written directly (no boolean mask to convert)."""
    return torch.gt(x, threshold, out=torch.empty_like(x))


# -- colour --------------------------------------------------------------------------------------
def grey(x: torch.Tensor) -> torch.Tensor:
    """Luminance (N, 1, H, W) of RGB or grey images."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.mul(r, LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])  # no (N, 3, H, W) temporary


def colour(rgb: tuple[float, float, float], channels: int, like: torch.Tensor) -> torch.Tensor:
    """An RGB colour (0..1) as a (1, C, 1, 1) tensor; its luminance for grey images."""
    c = torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return grey(c) if channels == 1 else c


# -- resampling ----------------------------------------------------------------------------------
def field_size(h: int, w: int, minimum: int) -> tuple[int, int]:
    """A size with the aspect of (h, w) whose short side is at least ``minimum``."""
    short = min(h, w)
    if short >= minimum:
        return h, w
    k = minimum / short
    return max(minimum, math.ceil(h * k)), max(minimum, math.ceil(w * k))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area averaging when shrinking, bilinear interpolation when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# -- filters -------------------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, truncate: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised Gaussian taps with radius ``int(truncate * sigma + 0.5)`` (SciPy's convention)."""
    radius = max(int(truncate * sigma + 0.5), 0)
    t = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "replicate"  # reflection needs a pad smaller than the image
    return F.pad(x, [pw, pw, ph, ph], mode=mode)


def _correlate_axis(y: torch.Tensor, k: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """Correlate (M, 1, H, W) with 1-D taps ``k`` along ``axis`` (-2 or -1): shifted in-place adds.

    On the CPU this is several times faster than ``conv2d`` with a one-channel (K, 1) kernel.
    """
    r = k.numel() // 2
    if r == 0:
        return y * k[0]
    size = y.shape[axis]
    padded = _pad(y, r, 0, mode) if axis == -2 else _pad(y, 0, r, mode)
    taps = k.tolist()
    out = padded.narrow(axis, 0, size) * taps[0]
    for i in range(1, len(taps)):
        out.add_(padded.narrow(axis, i, size), alpha=taps[i])
    return out


def gaussian_blur(
    x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0, mode: str = "replicate"
) -> torch.Tensor:
    """Separable Gaussian blur of every channel (``sigma`` in pixels, per axis if a pair).

    ``mode="replicate"`` is SciPy's ``nearest``, ``"reflect"`` is its ``mirror``. Short kernels run
    as shifted adds; long ones on large images as one FFT correlation with the outer product of the
    two 1-D kernels (the same truncated taps, equal up to float rounding).
    """
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    n, c, h, w = x.shape
    ky = gaussian_kernel1d(sy, truncate, x) if sy > 1e-3 else None
    kx = gaussian_kernel1d(sx, truncate, x) if sx > 1e-3 else None
    taps = (0 if ky is None else ky.numel()) + (0 if kx is None else kx.numel())
    if ky is not None and kx is not None and _fft_pays(taps, x):
        return _fft_correlate(x.reshape(n * c, h, w), ky[:, None] * kx[None], mode).reshape(n, c, h, w)
    y = x.reshape(n * c, 1, h, w)
    if ky is not None:
        y = _correlate_axis(y, ky, -2, mode)
    if kx is not None:
        y = _correlate_axis(y, kx, -1, mode)
    return y.reshape(n, c, h, w)


_FFT_TAPS = 30
"""Shifted adds (taps) above which a correlation runs as an FFT instead (measured crossover, one CPU thread)."""
_FFT_TAPS_CACHED = 50
"""The same for batches of at most :data:`_CACHED_ELEMENTS` values, whose shifted adds run from the cache."""
_CACHED_ELEMENTS = 1 << 20
_FFT_PIXELS = 64 * 64
"""Image area from which FFT correlation is used at all (below it, shifted adds are cheaper)."""


def _fft_pays(taps: int, x: torch.Tensor) -> bool:
    """Whether an FFT correlation is expected to beat ``taps`` shifted adds over ``x``."""
    if x.shape[-2] * x.shape[-1] < _FFT_PIXELS:
        return False
    return taps > (_FFT_TAPS_CACHED if x.numel() <= _CACHED_ELEMENTS else _FFT_TAPS)


def _fast_size(v: int) -> int:
    """The smallest length >= ``v`` of the form 2^a 3^b 5^c with a >= 2 (quick for the FFT)."""
    best = 4 * next_power_of_two(max(v, 4) // 4 + (1 if v % 4 else 0))
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            size = p35 * 4
            while size < v:
                size *= 2
            best = min(best, size)
            p35 *= 5
        p3 *= 3
    return best


def _fft_correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate planes ``x`` (M, H, W) with an odd ``kernel`` (2 ph + 1, 2 pw + 1), borders by ``mode``.

    The planes are padded (``mode``) straight to a quick FFT size, so the circular correlation never
    wraps into the image. Two real planes travel as the real and imaginary parts of one complex
    plane (the kernel is real, so the correlation keeps them apart), which halves the transforms.
    """
    m, h, w = x.shape
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    l1, l2 = _fast_size(h + 2 * ph), _fast_size(w + 2 * pw)
    centred = x.new_zeros(l1, l2)
    centred[:kh, :kw] = kernel.to(x.dtype)
    centred = torch.roll(centred, (-ph, -pw), dims=(0, 1))  # the kernel's centre at the origin
    spec = torch.fft.fft2(centred).conj_physical()
    half = (m + 1) // 2
    z = torch.empty(half, l1, l2, dtype=torch.promote_types(x.dtype, torch.complex64), device=x.device)
    pairs = torch.view_as_real(z).movedim(-1, 0)  # (2, half, l1, l2): real parts, imaginary parts
    if m % 2:
        pairs[1, -1] = 0.0
    for part, planes in zip(pairs, (x[:half], x[half:])):
        _pad_into(part[: planes.shape[0]], planes, ph, pw, mode)
    full = torch.fft.ifft2(torch.fft.fft2(z).mul_(spec))[:, ph : ph + h, pw : pw + w]
    out = torch.empty(2 * half, h, w, dtype=x.dtype, device=x.device)
    out[:half] = full.real
    out[half:] = full.imag
    return out[:m]


def _pad_into(dst: torch.Tensor, src: torch.Tensor, top: int, left: int, mode: str) -> None:
    """Write ``src`` (..., H, W) into ``dst`` (..., H', W') at (top, left), the rest filled by ``mode``.

    As :func:`_pad`: ``reflect`` mirrors without repeating the edge and turns into ``replicate`` when
    ``top`` or ``left`` is not smaller than the image. The bottom and right margins may be longer
    than ``top`` and ``left`` (up to the FFT size); mirroring stops at the far edge and the rest of
    such a margin repeats its last entry.
    """
    h, w = src.shape[-2:]
    hh, ww = dst.shape[-2:]
    if mode == "reflect" and (top >= h or left >= w):
        mode = "replicate"
    rows = dst.narrow(-2, top, h)
    rows.narrow(-1, left, w).copy_(src)
    _pad_axis(rows, left, ww - w - left, w, -1, mode)
    _pad_axis(dst, top, hh - h - top, h, -2, mode)


def _pad_axis(t: torch.Tensor, before: int, after: int, size: int, dim: int, mode: str) -> None:
    """Fill ``t``'s first ``before`` and last ``after`` entries along ``dim`` from the ``size`` between."""
    if mode == "reflect":
        if before:
            t.narrow(dim, 0, before).copy_(t.narrow(dim, before + 1, before).flip(dim))
        mirrored = min(after, size - 1)
        if mirrored:
            t.narrow(dim, before + size, mirrored).copy_(
                t.narrow(dim, before + size - 1 - mirrored, mirrored).flip(dim)
            )
        before, size, after = 0, before + size + mirrored, after - mirrored
    if before:
        t.narrow(dim, 0, before).copy_(t.narrow(dim, before, 1).expand_as(t.narrow(dim, 0, before)))
    if after:
        edge = t.narrow(dim, before + size - 1, 1)
        t.narrow(dim, before + size, after).copy_(edge.expand_as(t.narrow(dim, before + size, after)))


def dilate3(x: torch.Tensor) -> torch.Tensor:
    """3x3 maximum filter (separable shifted maxima; ``max_pool2d`` with stride 1 is slow on the CPU)."""
    p = F.pad(x, [0, 0, 1, 1], mode="replicate")
    rows = torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    p = F.pad(rows, [1, 1, 0, 0], mode="replicate")
    return torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])


def dilate3_mask(mask: torch.Tensor) -> torch.Tensor:
    """3x3 maximum filter of a boolean mask (N, C, H, W), borders replicated: in-place ORs of shifted slices."""
    rows = mask.clone()
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    out = rows.clone()
    out[..., 1:] |= rows[..., :-1]
    out[..., :-1] |= rows[..., 1:]
    return out


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Correlate every channel with an odd-sized 2-D ``kernel`` (FFT for large kernels on large images)."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    if _fft_pays(kh * kw, x):
        return _fft_correlate(x.reshape(n * c, h, w), kernel, mode).reshape(n, c, h, w)
    y = _pad(x.reshape(n * c, 1, h, w), kh // 2, kw // 2, mode)[:, 0]
    taps = kernel.tolist()
    out = torch.zeros(n * c, h, w, dtype=x.dtype, device=x.device)
    for i in range(kh):
        for j in range(kw):
            if taps[i][j]:
                out.add_(y[:, i : i + h, j : j + w], alpha=taps[i][j])
    return out.reshape(n, c, h, w)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter (OpenCV ``blur`` with reflect-101 borders)."""
    n, c, h, w = x.shape
    taps = torch.full((3,), 1 / 3, dtype=x.dtype, device=x.device)
    y = _correlate_axis(x.reshape(n * c, 1, h, w), taps, -2, "reflect")
    return _correlate_axis(y, taps, -1, "reflect").reshape(n, c, h, w)


def correlate3(x: torch.Tensor, kernel: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """Correlate every channel with a 3x3 ``kernel`` (reflect-101 borders) by nine shifted adds."""
    n, c, h, w = x.shape
    p = _pad(x.reshape(n * c, 1, h, w), 1, 1, "reflect")
    out = torch.zeros(n * c, 1, h, w, dtype=x.dtype, device=x.device)
    for i in range(3):
        for j in range(3):
            if kernel[i][j]:
                out.add_(p[..., i : i + h, j : j + w], alpha=kernel[i][j])
    return out.reshape(n, c, h, w)


def next_power_of_two(v: int) -> int:
    """The smallest power of two >= ``v`` (1 for ``v <= 1``)."""
    return 1 if v <= 1 else 1 << (v - 1).bit_length()
