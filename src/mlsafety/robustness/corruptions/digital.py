"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate and JPEG.

Brightness and saturate change HSV's value and saturation; both are written in closed form on RGB
(hue is kept), which equals scikit-image's ``rgb2hsv``/``hsv2rgb`` round trip that ImageNet-C uses.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch

from mlsafety.robustness.corruptions._filters import (
    field_size,
    gaussian_blur,
    gaussian_kernel1d,
    grey,
    pixel_grid,
    resize,
    sample,
    uniform,
)
from mlsafety.robustness.corruptions.base import MIN_FIELD, Corruption, register_corruption


@register_corruption("brightness")
class Brightness(Corruption):
    """HSV value ``V + c`` (clipped), hue and saturation kept; grey images: ``x + c``."""

    group = "weather"
    levels = (0.1, 0.2, 0.3, 0.4, 0.5)

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

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        return (x - mean) * level + mean


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

    Grey images are treated as RGB images with equal channels and brought back to grey by their
    luminance, so severities 1-3 leave them unchanged and 4-5 darken them slightly.
    """

    group = "digital"
    extra = True
    levels = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))

    def apply(self, x: torch.Tensor, level: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        if x.shape[1] == 1:
            return grey(saturate_rgb(x.expand(-1, 3, -1, -1), *level))
        return saturate_rgb(x, *level)


@register_corruption("elastic-transform")
class ElasticTransform(Corruption):
    """A smooth random displacement field (Simard et al. 2003), as in the ``imagecorruptions`` package.

    Displacements are uniform in ``[-0.005 H, 0.005 H]`` per pixel, blurred with sigma ``0.01``
    times the image size (truncated at 3 sigma) and multiplied by ``alpha`` (the level). That
    formulation is relative to the image size, except that a blur of fewer pixels shrinks the noise
    less; the field is rescaled so displacements have the size, relative to the image, that they have
    at ``reference_size``. It is drawn at a working size of at least ``MIN_FIELD`` pixels and
    resampled. Sampling is bilinear with mirrored borders.
    """

    group = "digital"
    levels = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)

    def apply(self, x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        fh, fw = field_size(h, w, MIN_FIELD)
        reach = fh * 0.005
        sigma = (fh * 0.01, fw * 0.01)
        field = gaussian_blur(uniform((n, 2, fh, fw), -reach, reach, g, x), sigma, truncate=3.0, mode="reflect")
        field = resize(field * level * self._roughness_correction(sigma, x), (h, w))
        dx = field[:, 0] * (w / fw)
        dy = field[:, 1] * (h / fh)
        px, py = pixel_grid(n, h, w, x)
        return sample(x, px + dx, py + dy, padding="reflection")

    def _roughness_correction(self, sigma: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
        """How much less a blur of ``sigma`` px shrinks white noise than the reference size's blur does.

        Blurring white noise scales its deviation by the kernel's L2 norm, which depends on sigma in
        pixels; this factor gives displacements the same size, relative to the image, at every size.
        """
        ref = 0.01 * self.reference_size
        norm_ref = gaussian_kernel1d(ref, 3.0, like).square().sum()
        norm = (
            gaussian_kernel1d(sigma[0], 3.0, like).square().sum()
            * gaussian_kernel1d(sigma[1], 3.0, like).square().sum()
        )
        return (norm_ref * norm_ref / norm).sqrt()


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
    """A JPEG round trip at quality 25, 18, 15, 10, 7 through Pillow's encoder (libjpeg).

    Images are rounded to 8 bits and encoded one at a time on the CPU (grey images as
    single-channel JPEG, colour with Pillow's default 4:2:0 chroma subsampling), then moved back to
    the input's device: a real encoder rather than an approximation of one.
    """

    group = "digital"
    levels = (25, 18, 15, 10, 7)

    def apply(self, x: torch.Tensor, level: int, g: torch.Generator) -> torch.Tensor:
        # x lies in [0, 1] (checked by the base class), so rounding x * 255 needs no clipping
        arr = x.detach().mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        _, h, w, c = arr.shape
        if c == 1 and h % 8 == 0 and w % 8 == 0:
            out = _jpeg_mosaic(arr[..., 0], int(level))[..., None]
        else:
            out = np.stack([_jpeg(img[..., 0] if c == 1 else img, int(level)).reshape(h, w, c) for img in arr])
        back = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2)
        return back.to(x.dtype).div_(255)


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
