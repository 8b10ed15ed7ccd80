"""A baseline JPEG codec in torch, as Pillow (libjpeg) writes and reads it, and Pillow's own round trip.

Wallace, "The JPEG still picture compression standard", 1991 (ITU-T T.81, Annex K for the tables);
the integer DCTs, colour conversion, chroma subsampling and upsampling follow the Independent JPEG
Group's libjpeg (``jfdctint``, ``jidctint``, ``jccolor``, ``jdsample``), which Pillow uses by
default. :func:`jpeg_round_trip` codes batches on any device; :func:`pillow_round_trip` passes each
image through Pillow on the CPU (the reference, and the ``encoder="pillow"`` option of the
``jpeg-compression`` corruption).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
import torch.nn.functional as F

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


def pillow_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """One Pillow JPEG round trip of an 8-bit grey (H, W) or RGB (H, W, 3) image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded)


_MOSAIC_SIDE = 1024


def pillow_jpeg_mosaic(images: np.ndarray, quality: int) -> np.ndarray:
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
        back = pillow_jpeg(mosaic, quality).reshape(r, h, cols, w).transpose(0, 2, 1, 3).reshape(r * cols, h, w)
        out[start : start + k] = back[:k]
    return out


def pillow_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow's JPEG round trip of images (N, C, H, W) in [0, 1], C = 1 or 3, image by image on the CPU.

    Images are taken to 8 bits (``x`` must lie in [0, 1]: rounding ``x * 255`` is not clipped); grey
    images whose sides are multiples of 8 go through the encoder as mosaics (:func:`pillow_jpeg_mosaic`).
    Returns multiples of 1/255 with ``x``'s dtype and device.
    """
    arr = x.detach().mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    _, h, w, c = arr.shape
    if c == 1 and h % 8 == 0 and w % 8 == 0:
        out = pillow_jpeg_mosaic(arr[..., 0], quality)[..., None]
    else:
        out = np.stack([pillow_jpeg(img[..., 0] if c == 1 else img, quality).reshape(h, w, c) for img in arr])
    back = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2)
    return back.to(x.dtype).div_(255)
