"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate and JPEG.

Brightness and saturate change HSV's value and saturation; both are written in closed form on RGB
(hue is kept), which equals scikit-image's ``rgb2hsv``/``hsv2rgb`` round trip that ImageNet-C uses.
The JPEG codec that ``jpeg-compression`` runs lives in :mod:`._jpeg`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

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
from mlsafety.robustness.corruptions._jpeg import jpeg_round_trip, pillow_round_trip
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
            Pillow's output up to rare one-level differences (see :func:`~._jpeg.jpeg_round_trip`);
            ``"pillow"``: each image through Pillow's encoder and decoder on the CPU
            (:func:`~._jpeg.pillow_round_trip`).
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
        return pillow_round_trip(x, int(level))  # x lies in [0, 1] (checked by the base class)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, encoder={self.encoder!r})"

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.encoder)
