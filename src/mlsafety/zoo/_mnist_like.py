"""OOD sets made here for the 28x28 MNIST family (``fashion-mnist``): constructed, not benchmark sets.

``letters-28`` (near-OOD)
    letters A-Z and a-z drawn in DejaVu fonts, made the way EMNIST made its letters from the NIST
    handwriting forms (Cohen et al., "EMNIST: an extension of MNIST to handwritten letters", 2017):
    a white glyph on black with a thick stroke on a large canvas, a Gaussian blur (sigma 1), cropped to
    its ink, centred in a square with a 2-pixel border and resized to 28x28 (bicubic). Deviations: printed
    fonts with random stroke widths and small rotations stand in for handwriting.
``digits-28`` (near-OOD)
    scikit-learn's 8x8 digits up-sampled the way MNIST framed its digits (LeCun et al., 1998): the
    digit scaled to a 20x20 box (bicubic) and centred in a 28x28 frame. They stay blurrier than MNIST
    (8x8 is all the detail they have).

Both are deterministic: each split draws its own sample from ``mlsafety.core.generator(0, name, split)``.
The far-OOD sets of ``fashion-mnist`` are the generic ``natural-patches`` and ``noise`` made at 28x28.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlsafety.core import ArrayDataset, generator
from mlsafety.zoo._images import font_files, resize_images

MNIST_SHAPE = (1, 28, 28)
_CANVAS = 128


def _emnist_frame(glyph: np.ndarray) -> np.ndarray:
    """EMNIST's framing of a (blurred) white-on-black image: crop to the ink, centre in a square with a
    2-pixel border (in 28x28 units), resize to 28x28 bicubic; values in [0, 1]."""
    from PIL import Image

    rows = np.flatnonzero(glyph.max(axis=1) > 0.02)
    cols = np.flatnonzero(glyph.max(axis=0) > 0.02)
    crop = glyph[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape)
    border = round(side * 2 / 24)  # 2 of 28 pixels once the 24-pixel inner square is scaled
    square = np.zeros((side + 2 * border, side + 2 * border), dtype=np.float32)
    top = border + (side - crop.shape[0]) // 2
    left = border + (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    image = Image.fromarray(square, mode="F").resize((28, 28), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def make_letters_28(
    split: str = "test", shape: tuple[int, int, int] | None = None, n: int = 520, description: str = ""
) -> ArrayDataset:
    """``letters-28``: EMNIST-style letters at 28x28 (see the module's description); ``y = -1``."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    g = generator(0, "letters-28", split)
    fonts = font_files()
    params = torch.rand(n, 4, generator=g).tolist()
    alphabet = [chr(ord("A") + i) for i in range(26)] + [chr(ord("a") + i) for i in range(26)]
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i in range(n):
        f, size, rot, stroke = params[i]
        letter = alphabet[i % len(alphabet)]
        font = ImageFont.truetype(str(fonts[int(f * len(fonts)) % len(fonts)]), size=int(70 + 20 * size))
        canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
        draw = ImageDraw.Draw(canvas)
        width = int(stroke * 3)  # with the glyph's own stroke, a pen of about 2-3 px at 28x28 (as on the NIST forms)
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font, stroke_width=width)
        origin = ((_CANVAS - (right - left)) / 2 - left, (_CANVAS - (bottom - top)) / 2 - top)
        draw.text(origin, letter, fill=255, font=font, stroke_width=width, stroke_fill=255)
        canvas = canvas.rotate((rot - 0.5) * 20, resample=Image.Resampling.BILINEAR)
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=1))
        images[i] = _emnist_frame(np.asarray(canvas, dtype=np.float32) / 255.0)
    x = resize_images(torch.from_numpy(images)[:, None], shape or MNIST_SHAPE)
    return ArrayDataset(x, torch.full((n,), -1), name="letters-28", kind="near", description=description)


def make_digits_28(
    split: str = "test", shape: tuple[int, int, int] | None = None, n: int = 500, description: str = ""
) -> ArrayDataset:
    """``digits-28``: scikit-learn's digits framed like MNIST (see the module's description); ``y = -1``."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
    pick = torch.randperm(images.shape[0], generator=generator(0, "digits-28", split))[:n]
    digits = F.interpolate(images[pick], size=(20, 20), mode="bicubic", align_corners=False).clamp(0, 1)
    x = F.pad(digits, [4, 4, 4, 4])
    x = resize_images(x, shape or MNIST_SHAPE)
    return ArrayDataset(x, torch.full((x.shape[0],), -1), name="digits-28", kind="near", description=description)
