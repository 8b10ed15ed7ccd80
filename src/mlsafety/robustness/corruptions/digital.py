"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate and JPEG.

Brightness and saturate change HSV's value and saturation; both are written in closed form on RGB
(hue is kept), which equals scikit-image's ``rgb2hsv``/``hsv2rgb`` round trip that ImageNet-C uses.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlsafety.core import InputError
from mlsafety.robustness.corruptions._filters import (
    field_size,
    gaussian_blur,
    gaussian_kernel1d,
    resize,
    uniform,
)
from mlsafety.robustness.corruptions.base import MIN_FIELD, TABLES, Corruption, register_corruption


@register_corruption("brightness")
class Brightness(Corruption):
    """HSV value ``V + c`` (clipped), hue and saturation kept; grey images: ``x + c``."""

    group = "weather"
    levels = (0.1, 0.2, 0.3, 0.4, 0.5)
    cifar_levels = (0.05, 0.1, 0.15, 0.2, 0.3)
    tiny_levels = (0.1, 0.2, 0.3, 0.4, 0.5)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        if x.shape[1] == 1:
            return x + level
        v = x.amax(dim=1, keepdim=True)
        v_new = (v + level).clamp(0, 1)
        return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


@register_corruption("contrast")
class Contrast(Corruption):
    """``(x - mean) * c + mean`` with each channel's mean over the image."""

    group = "digital"
    levels = (0.4, 0.3, 0.2, 0.1, 0.05)
    cifar_levels = (0.75, 0.5, 0.4, 0.3, 0.15)
    tiny_levels = (0.4, 0.3, 0.2, 0.1, 0.05)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        return torch.add(mean * (1 - level), x, alpha=level)  # c x + (1 - c) mean in one pass


def saturate_rgb(x: torch.Tensor, factor: float, offset: float) -> torch.Tensor:
    """HSV saturation ``S * factor + offset`` (clipped), hue and value kept, as scikit-image computes it.

    Each channel is ``V - (V - x) * S' / S``; grey pixels (S = 0) have hue 0 (red), so they become
    ``(V, V (1 - S'), V (1 - S'))``.
    """
    v = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - lo) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * factor + offset).clamp(0, 1)
    coloured = v - (v - x) * s_new / s.clamp_min(1e-12)
    red_hue = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(s > 0, coloured, red_hue)


@register_corruption("saturate")
class Saturate(Corruption):
    """HSV saturation ``S * a + b``; levels are (a, b) (an extra corruption).

    Not applicable to one-channel images (:meth:`undefined`): a grey image has no saturation, so
    severities 1-3 would leave it unchanged and 4-5 would only darken it through the hue-0 (red)
    convention of grey pixels. Calling it on one channel raises :class:`~mlsafety.core.InputError`.
    """

    group = "digital"
    extra = True
    levels = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))
    cifar_levels = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))
    tiny_levels = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (30.0, 0.2))

    def undefined(self, channels: int) -> str | None:
        if channels == 1:
            return "a one-channel (grey) image has no saturation to change"
        return None

    def apply(self, x: torch.Tensor, level: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        return saturate_rgb(x, *level)


_ELASTIC_FIELD = 112
"""Short side above which the elastic field is drawn at an integer fraction of the image size, keeping at
least this many pixels: its blur (sigma 1% of the side, over 1.1 working pixels) leaves no finer detail."""


@register_corruption("elastic-transform")
class ElasticTransform(Corruption):
    """A smooth random displacement field (Simard et al. 2003), as in the ``imagecorruptions`` package.

    Displacements are uniform in ``[-0.005 H, 0.005 H]`` per pixel, blurred with sigma ``0.01``
    times the image size (truncated at 3 sigma) and multiplied by ``alpha`` (the level). That
    formulation is relative to the image size, except that a blur of fewer pixels shrinks the noise
    less; the field is rescaled so displacements have the size, relative to the image, that they have
    at ``reference_size`` (224 unless given). It is drawn at a working size of at least ``MIN_FIELD``
    pixels (and, on images larger than twice ``_ELASTIC_FIELD``, at an integer fraction of the size
    that keeps the blur above a working pixel) and resampled. Sampling is bilinear with mirrored borders.

    The same (ImageNet-C) levels serve every image size: CIFAR-10-C's and Tiny-ImageNet-C's generators
    use another formulation (a random affine warp plus an elastic field, three parameters per level)
    whose tables do not translate into this one's ``alpha``; this formulation is already relative to
    the image size.
    """

    group = "digital"
    levels = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        fh, fw = field_size(h, w, MIN_FIELD)
        step = max(1, min(fh, fw) // _ELASTIC_FIELD)  # large images: the smooth field at a fraction of the size
        fh, fw = -(-fh // step), -(-fw // step)
        reach = fh * 0.005
        sigma = (fh * 0.01, fw * 0.01)
        field = gaussian_blur(uniform((n, 2, fh, fw), -reach, reach, g, x), sigma, truncate=3.0, mode="reflect")
        # displacements in grid_sample's [-1, 1] units: working pixels * (w / fw) pixels * (2 / w)
        units = torch.tensor([2 / fw, 2 / fh], dtype=x.dtype, device=x.device).view(1, 2, 1, 1)
        gain = level * self._roughness_correction(sigma, x) / _interpolation_loss(sigma, step)
        field = resize(field.mul_(units * gain), (h, w))
        gx = field[:, 0].add_(torch.arange(w, dtype=x.dtype, device=x.device).mul_(2 / w).add_(1 / w - 1))
        gy = field[:, 1].add_(torch.arange(h, dtype=x.dtype, device=x.device).mul_(2 / h).add_(1 / h - 1)[:, None])
        grid = torch.view_as_real(torch.complex(gx, gy))  # (n, h, w, 2) interleaved in one fast pass
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _roughness_correction(self, sigma: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
        """How much less a blur of ``sigma`` px shrinks white noise than the reference size's blur does.

        Blurring white noise scales its deviation by the kernel's L2 norm, which depends on sigma in
        pixels; this factor gives displacements the same size, relative to the image, at every size.
        """
        ref = 0.01 * (self.reference_size or TABLES["imagenet-c"])
        norm_ref = gaussian_kernel1d(ref, 3.0, like).square().sum()
        norm = (
            gaussian_kernel1d(sigma[0], 3.0, like).square().sum()
            * gaussian_kernel1d(sigma[1], 3.0, like).square().sum()
        )
        return (norm_ref * norm_ref / norm).sqrt()


@functools.lru_cache(maxsize=64)
def _interpolation_loss(sigma: tuple[float, float], step: int) -> float:
    """The deviation of a blurred white-noise field after bilinear enlargement by ``step``, relative to before.

    An output between two samples at fraction ``f`` has variance ``(1 - f)^2 + f^2 + 2 f (1 - f) rho``
    times theirs, ``rho`` the correlation of neighbouring samples (the blur kernel's lag-1
    autocorrelation); averaged over the ``step`` output phases of each axis.
    """
    if step == 1:
        return 1.0
    loss = 1.0
    for s in sigma:
        k = gaussian_kernel1d(s, 3.0, torch.zeros((), dtype=torch.float64))
        rho = float((k[1:] * k[:-1]).sum() / k.square().sum())
        fracs = [((j + 0.5) / step - 0.5) % 1.0 for j in range(step)]
        loss *= sum((1 - f) ** 2 + f**2 + 2 * f * (1 - f) * rho for f in fracs) / step
    return math.sqrt(loss)


@functools.lru_cache(maxsize=128)
def _box_taps(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's BOX resampling (``ImagingResample`` coefficients) as ``taps`` gathers: (index, weight).

    Output pixel ``i`` averages the input pixels whose centres lie within half a scale of its centre,
    a contiguous window ``[lo, lo + count)`` (the windows partition the input). Returned as two
    (taps, size_out) CPU tensors: the k-th source index of each window (repeating its last pixel when
    the window is shorter) and its weight ``1 / count`` (0 for the repeats).
    """
    scale = size_in / size_out
    support = max(scale, 1.0) * 0.5
    windows = []
    for i in range(size_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        inside = [j for j in range(lo, hi) if -0.5 < (j - centre + 0.5) / max(scale, 1.0) <= 0.5]
        windows.append(inside or [min(max(int(centre), 0), size_in - 1)])
    taps = max(len(win) for win in windows)
    index = [[win[min(k, len(win) - 1)] for win in windows] for k in range(taps)]
    weight = [[1.0 / len(win) if k < len(win) else 0.0 for win in windows] for k in range(taps)]
    return torch.tensor(index, dtype=torch.long), torch.tensor(weight, dtype=torch.float64)


@functools.lru_cache(maxsize=128)
def _nearest_index(size_out: int, size_in: int) -> torch.Tensor:
    """Pillow's NEAREST source index for each output pixel (it accumulates the step in doubles), on the CPU."""
    step = size_in / size_out
    pos = step * 0.5
    index = []
    for _ in range(size_out):
        index.append(min(int(pos), size_in - 1))
        pos += step
    return torch.tensor(index, dtype=torch.long)


def _box_shrink(x: torch.Tensor, size_out: int, dim: int) -> torch.Tensor:
    """Pillow's BOX shrink of axis ``dim`` of ``x`` (2-D or 3-D) to ``size_out``: a few weighted gathers.

    ``dim`` is 1: rows of a 3-D (M, L, K) tensor, or columns of a 2-D (M, L) one (a 2-D gather along
    the last axis is several times faster on the CPU than a gather along the last axis of a 4-D one).
    """
    index, weight = _box_taps(x.shape[dim], size_out)
    index = index.to(x.device)
    weight = weight.to(device=x.device, dtype=x.dtype)
    if x.ndim == 3:
        weight = weight.unsqueeze(-1)
    out = x.index_select(dim, index[0]).mul_(weight[0])
    for k in range(1, index.shape[0]):
        out.addcmul_(x.index_select(dim, index[k]), weight[k])
    return out


@register_corruption("pixelate")
class Pixelate(Corruption):
    """Shrink to ``int(c * size)`` with a box filter, enlarge back with nearest neighbours (as Pillow).

    Written as gathers of whole rows (the box windows are contiguous and hold a few pixels each),
    with the column axis treated as the rows of a 2-D view, so no pass costs more than a copy.
    """

    group = "digital"
    levels = (0.6, 0.5, 0.4, 0.3, 0.25)
    cifar_levels = (0.95, 0.9, 0.85, 0.75, 0.65)
    tiny_levels = (0.9, 0.8, 0.7, 0.6, 0.5)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        sh, sw = max(int(h * level), 1), max(int(w * level), 1)
        small = _box_shrink(x.reshape(n * c, h, w), sh, 1)  # (n c, sh, w)
        small = _box_shrink(small.view(n * c * sh, w), sw, 1)  # (n c sh, sw)
        cols = small.index_select(1, _nearest_index(w, sw).to(x.device))
        rows = _nearest_index(h, sh).to(x.device)
        return cols.view(n * c, sh, w).index_select(1, rows).view(n, c, h, w)


@register_corruption("jpeg-compression")
class JpegCompression(Corruption):
    """A baseline JPEG round trip at quality 25, 18, 15, 10, 7, as Pillow (libjpeg) writes and reads it.

    Images are taken to 8 bits; grey images are coded as one component, colour ones as JFIF YCbCr
    with 4:2:0 chroma subsampling (Pillow's default).

    Args:
        reference_size: see :class:`Corruption` (JPEG has no length parameter).
        table: see :class:`Corruption` (the quality is the table's).
        encoder: ``"torch"`` (the default): the codec written in torch, batched on the input's device,
            Pillow's output up to rare one-level differences (see :func:`jpeg_round_trip`); ``"pillow"``:
            each image through Pillow's encoder and decoder on the CPU.
    """

    group = "digital"
    levels = (25, 18, 15, 10, 7)
    cifar_levels = (80, 65, 58, 50, 40)
    tiny_levels = (65, 58, 50, 40, 25)

    def __init__(self, reference_size: float | None = None, table: str | None = None, encoder: str = "torch") -> None:
        super().__init__(reference_size, table)
        if encoder not in ("torch", "pillow"):
            raise InputError(f"encoder must be 'torch' or 'pillow', got {encoder!r}")
        self.encoder = encoder

    def apply(self, x: torch.Tensor, level: int, g: torch.Generator) -> torch.Tensor:
        if self.encoder == "torch":
            return jpeg_round_trip(x, int(level), clip=False)  # the base class clips
        # x lies in [0, 1] (checked by the base class), so rounding x * 255 needs no clipping
        arr = x.detach().mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        _, h, w, c = arr.shape
        if c == 1 and h % 8 == 0 and w % 8 == 0:
            out = _jpeg_mosaic(arr[..., 0], int(level))[..., None]
        else:
            out = np.stack([_jpeg(img[..., 0] if c == 1 else img, int(level)).reshape(h, w, c) for img in arr])
        back = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2)
        return back.to(x.dtype).div_(255)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, encoder={self.encoder!r})"

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.encoder)


# -- JPEG in torch ---------------------------------------------------------------------------------
_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
"""The IJG standard luminance quantisation table (JPEG standard, Annex K.1), row-major."""

_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip
"""The IJG standard chrominance quantisation table (Annex K.1), row-major."""

_AWAY = 1 + 2**-20
"""Quantising divides by ``q / _AWAY``: exact halves round away from zero (libjpeg), not to even."""


def _fix(v: float) -> int:
    """libjpeg's 16-bit fixed-point constant ``FIX(v)``."""
    return int(v * 65536 + 0.5)


def quant_table(quality: int, chroma: bool = False) -> list[int]:
    """libjpeg's baseline quantisation table (64 entries, row-major) for ``quality`` 1..100.

    ``jpeg_quality_scaling``: ``5000 / q`` below 50, else ``200 - 2 q``; each entry
    ``(t * scale + 50) // 100`` clamped to [1, 255].
    """
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = _CHROMA_TABLE if chroma else _LUMA_TABLE
    return [min(max((t * scale + 50) // 100, 1), 255) for t in base]


@functools.lru_cache(maxsize=64)
def _quantisers(quality: int, chroma: bool, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU float64 (8, width) quantiser steps ``q[u, column % 8]``: for encoding (8 q, nudged so that exact
    halves round away from zero, on libjpeg's 8x-scaled coefficients) and for decoding (q)."""
    q = torch.tensor(quant_table(quality, chroma), dtype=torch.float64).view(8, 8).repeat(1, width // 8)
    return q * 8 / _AWAY, q


def _pad_to(x: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """Replicate the last row and column of (..., H, W) up to multiples of ``mh`` and ``mw``."""
    h, w = x.shape[-2:]
    ph, pw = -h % mh, -w % mw
    if ph == 0 and pw == 0:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, h, w)
    return F.pad(flat, [0, pw, 0, ph], mode="replicate").view(*shape[:-2], h + ph, w + pw)


_ISLOW = (
    (4, 4, 4, 4, 4, 4, 4, 4),
    (11363, 9633, 6437, 2260, -2260, -6437, -9633, -11363),
    (10703, 4433, -4433, -10703, -10703, -4433, 4433, 10703),
    (9633, -2259, -11362, -6436, 6436, 11362, 2259, -9633),
    (4, -4, -4, 4, 4, -4, -4, 4),
    (6437, -11362, 2261, 9633, -9633, -2261, 11362, -6437),
    (4433, -10704, 10704, -4433, -4433, 10704, -10704, 4433),
    (2260, -6436, 9633, -11363, 11363, -9633, 6436, -2260),
)  # fmt: skip
"""libjpeg's ``jfdctint`` (the default "islow" forward DCT) first pass as an integer matrix: its butterflies
with 13-bit constants multiplied out (row ``u`` gives output ``u`` before DESCALE). Rows 0 and 4 are
exact (``<< PASS1_BITS``); the others are descaled by ``CONST_BITS - PASS1_BITS = 11`` bits. The second
pass is the same matrix with rows 0 and 4 divided by 4 and descaled by 2 bits, the others by 15."""


_ISLOW_INVERSE = (
    (8192, 11363, 10703, 9633, 8192, 6437, 4433, 2260),
    (8192, 9633, 4433, -2259, -8192, -11362, -10704, -6436),
    (8192, 6437, -4433, -11362, -8192, 2261, 10704, 9633),
    (8192, 2260, -10703, -6436, 8192, 9633, -4433, -11363),
    (8192, -2260, -10703, 6436, 8192, -9633, -4433, 11363),
    (8192, -6437, -4433, 11362, -8192, -2261, 10704, -9633),
    (8192, -9633, 4433, 2259, -8192, 11362, -10704, 6436),
    (8192, -11363, 10703, -9633, 8192, -6437, 4433, -2260),
)  # fmt: skip
"""libjpeg's ``jidctint`` (the default "islow" inverse DCT) as an integer matrix: sample ``i`` of a column
(first pass, DESCALE by 11 bits) or row (second pass, DESCALE by 18 bits, then + 128 and clipping)."""


@functools.lru_cache(maxsize=1)
def _islow_inverse_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """``jidctint``'s two passes as matrices with their DESCALE folded in: ``floor(m @ v + 1/2)`` each.

    In float32 the products round by well under 1e-3 of an output unit, so a DESCALE can differ from
    libjpeg's by one in rare cases where the exact value sits on the boundary.
    """
    m = torch.tensor(_ISLOW_INVERSE, dtype=torch.float64)
    return m / 2**11, torch.block_diag(m.T, m.T) / 2**18  # columns, then rows two blocks at a time


@functools.lru_cache(maxsize=1)
def _islow_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """``jfdctint`` as two matrices whose rows carry their DESCALE: ``floor(m @ v + 1/2)`` per pass.

    In float32 the first pass is exact (every partial sum is a multiple of 2^-11 below 2^12); the second
    rounds its products, by under 1e-3 of a coefficient unit, so its DESCALE can differ from libjpeg's by
    one unit for about one coefficient in a thousand, which then moves the quantised value in about one
    case in 8 q (q the quantiser step) -- a few coefficients per megapixel.
    """
    m = torch.tensor(_ISLOW, dtype=torch.float64)
    odd = [1, 2, 3, 5, 6, 7]
    first, second = m.clone(), m.clone()
    first[odd] /= 2**11
    second[[0, 4]] /= 16
    second[odd] /= 2**15
    return torch.block_diag(first.T, first.T), second  # the first pass runs along rows, two blocks at a time


def _code_planes(p: torch.Tensor, quality: int, chroma: bool, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Encode and decode level-shifted planes (M, H, W), H a multiple of 8, W of 16: decoded 8-bit samples.

    libjpeg's integer forward DCT ("islow", :func:`_islow_tensors`), quantisation rounding halves away from
    zero, dequantisation, its integer inverse DCT (:func:`_islow_inverse_tensors`) with the decoder's level
    shift and clipping to [0, 255]. ``p`` is overwritten with the result; ``scratch`` (at least ``p``'s
    size, contiguous) is a work buffer to reuse instead of fresh memory.
    """
    m, h, w = p.shape
    q_enc, q_dec = (t.to(device=p.device, dtype=p.dtype) for t in _quantisers(quality, chroma, w))
    rows, cols = (t.to(device=p.device, dtype=p.dtype) for t in _islow_tensors())
    blocks = p.view(m * (h // 8), 8, w)  # p is ours: it doubles as a work buffer (fresh pages cost on the CPU)
    if scratch is not None and scratch.numel() >= p.numel():
        c = scratch.view(-1)[: p.numel()].view(blocks.shape)
    else:
        c = torch.empty_like(blocks)
    half = torch.full((), 0.5, dtype=p.dtype, device=p.device)
    torch.addmm(half, blocks.view(-1, 16), rows, out=c.view(-1, 16)).floor_()  # pass 1 along block rows
    torch.matmul(cols, c, out=blocks).add_(0.5).floor_()  # pass 2 along block columns: 8 x the DCT
    blocks.div_(q_enc).round_().mul_(q_dec)  # quantise as (|c| + 4q) // 8q with c's sign; dequantise
    inv_cols, inv_rows = (t.to(device=p.device, dtype=p.dtype) for t in _islow_inverse_tensors())
    blocks[:, 0] += 0.125  # row u = 0 weighs 4 in every output of pass 1: its DESCALE half, on 1/8 of the data
    torch.matmul(inv_cols, blocks, out=c).floor_()  # inverse pass 1 along block columns
    bias = torch.full((), 128.5, dtype=p.dtype, device=p.device)  # DESCALE's half and the level shift
    torch.addmm(bias, c.view(-1, 16), inv_rows, out=blocks.view(-1, 16))  # pass 2 along block rows
    return p.floor_().clamp_(0, 255)


def jpeg_round_trip(x: torch.Tensor, quality: int, clip: bool = True) -> torch.Tensor:
    """Baseline JPEG compression and decompression of images (N, C, H, W) in [0, 1], C = 1 or 3, in torch.

    What Pillow's default encoder and decoder (libjpeg) do, batched on ``x``'s device: 8-bit samples;
    JFIF RGB -> YCbCr with libjpeg's fixed-point constants; 4:2:0 chroma subsampling (2x2 means with
    libjpeg's alternating rounding bias; grey images have one component and no subsampling); edges
    replicated to whole blocks (16 pixels for subsampled chroma); 8x8 DCT-II; quantisation with the
    IJG tables scaled by ``quality`` (:func:`quant_table`); dequantisation, inverse DCT, libjpeg's
    "fancy" (triangular, 3/4-1/4) chroma upsampling with its integer rounding, YCbCr -> RGB with its
    fixed-point tables, rounding and clipping to 8 bits. Both DCTs are libjpeg's integer ones ("islow",
    as matrix products whose rows carry libjpeg's DESCALE), so the output is Pillow's bit for bit, up to
    a rare one-level difference where float32 rounding meets a DESCALE boundary (see the tests).

    Args:
        x: images (N, C, H, W) in [0, 1], C = 1 or 3, on any device.
        quality: the JPEG quality, 1..100.
        clip: clip to [0, 1] as the decoder does; ``False`` leaves colour values that overshoot for a
            caller that clips anyway (one pass fewer).

    Returns:
        The decoded images, (N, C, H, W), multiples of 1/255.
    """
    n, c, h, w = x.shape
    shift = torch.tensor(-127.5, dtype=x.dtype, device=x.device)
    if c == 1:
        y = _pad_to(torch.add(shift, x[:, 0], alpha=255).floor_(), 8, 16)  # round to 8 bits, level shift
        return _code_planes(y, quality, False)[:, None, :h, :w].div_(255)
    # luma: floor(FIX-weighted sum + 1/2) - 128 on 8-bit samples
    wy = [255 * _fix(v) / 65536 for v in (0.299, 0.587, 0.114)]
    y = torch.add(shift, x[:, 0], alpha=wy[0]).add_(x[:, 1], alpha=wy[1]).add_(x[:, 2], alpha=wy[2]).floor_()
    # chroma at full resolution (padded to even rows and 16-pixel columns), then 2x2 sums + bias 1, 2, 1, ... / 4
    xp = _pad_to(x, 2, 16)
    full = torch.empty(n, 2, *xp.shape[-2:], dtype=x.dtype, device=x.device)
    wb = (-_fix(0.16874), -_fix(0.33126), _fix(0.5))
    wr = (_fix(0.5), -_fix(0.41869), -_fix(0.08131))
    half = torch.tensor(0.5 - 2**-16, dtype=x.dtype, device=x.device)  # libjpeg's ONE_HALF - 1 for chroma
    for i, wt in enumerate((wb, wr)):
        k = [255 * v / 65536 for v in wt]
        torch.add(half, xp[:, 0], alpha=k[0], out=full[:, i]).add_(xp[:, 1], alpha=k[1]).add_(xp[:, 2], alpha=k[2])
    full = full.floor_()  # level-shifted Cb, Cr
    rows = full[..., 0::2, :] + full[..., 1::2, :]
    ch = rows[..., 0::2] + rows[..., 1::2]
    bias = torch.tensor([1.0, 2.0], dtype=x.dtype, device=x.device).repeat(ch.shape[-1] // 2)
    ch = _pad_to(ch.add_(bias).mul_(0.25).floor_(), 8, 16)
    hh, ww = ch.shape[-2:]
    # the full-resolution chroma planes are free until upsampling: the codec's work buffer
    y = _code_planes(_pad_to(y, 8, 16), quality, False, scratch=full)[:, :h, :w]
    ch = _code_planes(ch.view(n * 2, hh, ww), quality, True, scratch=full).view(n, 2, hh, ww)
    # fancy upsampling of the chroma that covers the image: vertical 3:1 sums, horizontal 3:1, + 8 or 7, / 16
    chh, cww = (h + 1) // 2, (w + 1) // 2
    p = F.pad(ch[..., :chh, :cww], [1, 1, 1, 1], mode="replicate").add_(0.5)  # + 8 after both 3:1 sums
    v = torch.empty(n, 2, chh, 2, cww + 2, dtype=x.dtype, device=x.device)
    torch.add(p[..., :-2, :], p[..., 1:-1, :], alpha=3, out=v[:, :, :, 0])
    torch.add(p[..., 2:, :], p[..., 1:-1, :], alpha=3, out=v[:, :, :, 1])
    v = v.view(n, 2, 2 * chh, cww + 2)
    o = full[..., : 2 * cww].view(n, 2, 2 * chh, cww, 2)  # the full-resolution chroma buffer, free again
    torch.add(v[..., :-2], v[..., 1:-1], alpha=3, out=o[..., 0])
    torch.add(v[..., 2:], v[..., 1:-1], alpha=3, out=o[..., 1])
    o[..., 1].sub_(1)  # the odd output columns round with + 7
    o = o.mul_(1 / 16).floor_()
    o = o.view(n, 2, 2 * chh, 2 * cww)[..., :h, :w]
    cb, cr = o[:, 0], o[:, 1]
    # YCbCr -> RGB: y + floor(FIX(k) * (c - 128) / 65536 + 1/2) = floor(y + ...) (y is whole), into the output
    kr, kb = _fix(1.402) / 65536, _fix(1.772) / 65536
    kgb, kgr = -_fix(0.34414) / 65536, -_fix(0.71414) / 65536
    out = torch.empty(n, 3, h, w, dtype=x.dtype, device=x.device)
    torch.add(y, cr, alpha=kr, out=out[:, 0]).add_(0.5 - 128 * kr).floor_()
    torch.add(y, cb, alpha=kgb, out=out[:, 1]).add_(cr, alpha=kgr).add_(0.5 - 128 * (kgb + kgr)).floor_()
    torch.add(y, cb, alpha=kb, out=out[:, 2]).add_(0.5 - 128 * kb).floor_()
    out = out.mul_(1 / 255)
    return out.clamp_(0.0, 1.0) if clip else out


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """One Pillow JPEG round trip of an 8-bit grey (H, W) or RGB (H, W, 3) image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded)


_MOSAIC_SIDE = 1024


def _jpeg_mosaic(images: np.ndarray, quality: int) -> np.ndarray:
    """Round trips of grey images (N, H, W) with H, W multiples of 8 as one mosaic per chunk.

    Grey baseline JPEG codes every 8x8 block on its own (the DC difference chain is lossless) and
    decodes without upsampling, so a mosaic of block-aligned images gives each image exactly its own
    round trip, with one encoder call instead of N.
    """
    n, h, w = images.shape
    cols = max(1, _MOSAIC_SIDE // w)
    rows_per_chunk = max(1, 16384 // h)
    out = np.empty_like(images)
    per_chunk = cols * rows_per_chunk
    for start in range(0, n, per_chunk):
        chunk = images[start : start + per_chunk]
        k = chunk.shape[0]
        r = -(-k // cols)
        canvas = np.zeros((r * cols, h, w), dtype=np.uint8)
        canvas[:k] = chunk
        mosaic = canvas.reshape(r, cols, h, w).transpose(0, 2, 1, 3).reshape(r * h, cols * w)
        back = _jpeg(mosaic, quality).reshape(r, h, cols, w).transpose(0, 2, 1, 3).reshape(r * cols, h, w)
        out[start : start + k] = back[:k]
    return out
