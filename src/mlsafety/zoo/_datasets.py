"""Embedded datasets, made from what installed packages ship; nothing is downloaded.

``digits``
    scikit-learn's 1,797 handwritten digits (8x8, values 0..16, scaled to [0, 1]). Split: a
    permutation of all samples drawn with ``mlsafety.core.generator(0, "digits-split")`` and cut
    into train (first 60%: 1,078), val (next 20%: 359) and test (last 20%: 360).
``letters`` (near-OOD)
    glyphs A-Z drawn with Pillow in DejaVu fonts (shipped by Matplotlib) at several sizes, stroke widths,
    offsets and rotations on a 32x32 canvas, then reduced exactly as the digits were made: the count of
    ink pixels in each 4x4 block, divided by 16.
``natural-patches`` (far-OOD)
    grey-scale patches of scikit-learn's two sample photographs, area-downsampled to 8x8.
``noise`` (far-OOD)
    half uniform noise, half random Gaussian blobs.
``fashion-mnist``
    Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (see :mod:`mlsafety.zoo._fashion`), with its
    own near-OOD sets ``letters-28`` and ``digits-28`` (:mod:`mlsafety.zoo._mnist_like`); its far-OOD sets
    are ``natural-patches`` and ``noise`` made at 28x28.

Every OOD set is deterministic and can be made at another shape (``shape=(C, H, W)``) so it can
serve any image model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from mlsafety.core import ArrayDataset, InputError, TextDataset, UnknownNameError, generator
from mlsafety.zoo._fashion import load_fashion_mnist
from mlsafety.zoo._images import font_files, resize_images
from mlsafety.zoo._mnist_like import make_digits_28, make_letters_28

DIGITS_SHAPE = (1, 8, 8)
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class DatasetInfo:
    """An embedded dataset.

    Attributes:
        name: the zoo name.
        kind: ``"in"`` (labelled, in-distribution), ``"near"`` or ``"far"`` (OOD, ``y = -1``).
        description: one line for ``mlsafety zoo list``.
        make: ``make(split=..., shape=...)`` returns the data (an ``ArrayDataset`` for images, a
            ``TextDataset`` for text).
        modality: ``"image"`` or ``"text"``.
        size: its size for ``mlsafety zoo list`` (rows of its ``all`` split, or per split).
        source: where it comes from (package, version, licence).
        ood: for an in-distribution set, the OOD sets made for it (what an audit of a model trained on
            it uses by default); empty: the generic ones (:func:`ood_names`).
        generic: for an OOD set, whether it serves any image or text model of its modality (False: it was
            made for one in-distribution set, which names it in ``ood``).
    """

    name: str
    kind: str  # "in", "near" or "far"
    description: str
    make: Callable[..., Any]
    modality: str = "image"
    size: str = ""
    source: str = ""
    ood: tuple[str, ...] = ()
    generic: bool = True


def _digits(split: str = "test", shape: tuple[int, int, int] | None = None) -> ArrayDataset:
    from sklearn.datasets import load_digits

    if shape not in (None, DIGITS_SHAPE):
        raise InputError(
            f"the digits dataset exists only at shape (1, 8, 8), not {shape}; use it beside data of that shape"
        )
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(x.shape[0], generator=generator(0, "digits-split"))
    n = x.shape[0]
    a = round(SPLIT_FRACTIONS[0] * n)
    b = a + round(SPLIT_FRACTIONS[1] * n)
    parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:], "all": perm}
    if split not in parts:
        raise InputError(f"digits has splits train, val, test and all, not {split!r}")
    idx = parts[split]
    return ArrayDataset(x[idx], y[idx], name="digits", kind="in", description=_INFO["digits"].description)


def _letters(split: str = "test", shape: tuple[int, int, int] | None = None, n: int = 520) -> ArrayDataset:
    from PIL import Image, ImageDraw, ImageFont

    g = generator(0, "letters", split)
    fonts = font_files()
    params = torch.rand(n, 6, generator=g)
    images = np.zeros((n, 32, 32), dtype=np.float32)
    for i in range(n):
        letter = chr(ord("A") + i % 26)
        f, size, dx, dy, rot, stroke = params[i].tolist()
        font = ImageFont.truetype(str(fonts[int(f * len(fonts)) % len(fonts)]), size=int(30 + 12 * size))
        canvas = Image.new("L", (32, 32), 0)
        draw = ImageDraw.Draw(canvas)
        width = 1 + int(stroke * 2)  # digits were written with a thick pen
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font, stroke_width=width)
        ox = (32 - (right - left)) / 2 - left + (dx - 0.5) * 6
        oy = (32 - (bottom - top)) / 2 - top + (dy - 0.5) * 6
        draw.text((ox, oy), letter, fill=255, font=font, stroke_width=width, stroke_fill=255)
        canvas = canvas.rotate((rot - 0.5) * 30, resample=Image.Resampling.BILINEAR)
        images[i] = np.asarray(canvas, dtype=np.float32) > 127
    # The digits were made by counting "on" pixels in 4x4 blocks of a 32x32 bitmap (0..16).
    blocks = torch.from_numpy(images)[:, None]
    x = F.avg_pool2d(blocks, 4)
    x = resize_images(x, shape or DIGITS_SHAPE)
    return ArrayDataset(x, torch.full((n,), -1), name="letters", kind="near", description=_INFO["letters"].description)


def _natural_patches(split: str = "test", shape: tuple[int, int, int] | None = None, n: int = 500) -> ArrayDataset:
    from sklearn.datasets import load_sample_images

    shape = shape or DIGITS_SHAPE
    photos = [torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1) for img in load_sample_images().images]
    g = generator(0, "natural-patches", split)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(torch.randint(16, 97, (1,), generator=g))
        top = int(torch.randint(0, photo.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(0, photo.shape[2] - side + 1, (1,), generator=g))
        patch = photo[:, top : top + side, left : left + side][None]
        if shape[0] == 1:
            patch = 0.299 * patch[:, 0:1] + 0.587 * patch[:, 1:2] + 0.114 * patch[:, 2:3]
        out.append(resize_images(patch, shape))
    x = torch.cat(out)
    return ArrayDataset(
        x, torch.full((n,), -1), name="natural-patches", kind="far", description=_INFO["natural-patches"].description
    )


def _noise(split: str = "test", shape: tuple[int, int, int] | None = None, n: int = 500) -> ArrayDataset:
    c, h, w = shape or DIGITS_SHAPE
    g = generator(0, "noise", split)
    half = n // 2
    uniform = torch.rand(half, c, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    k = 4
    centres = torch.rand(n - half, k, 2, generator=g)
    widths = 0.05 + 0.25 * torch.rand(n - half, k, 1, 1, generator=g)
    amps = torch.rand(n - half, k, 1, 1, generator=g)
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    blobs = (amps * torch.exp(-d2 / (2 * widths**2))).sum(dim=1, keepdim=True)
    blobs = blobs / blobs.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    blobs = blobs.expand(-1, c, -1, -1)
    x = torch.cat([uniform, blobs]).clamp(0, 1).contiguous()
    return ArrayDataset(x, torch.full((n,), -1), name="noise", kind="far", description=_INFO["noise"].description)


_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits",
        "in",
        "scikit-learn handwritten digits, 8x8 grey, 10 classes, train/val/test 60/20/20",
        _digits,
        size="1,797 rows",
        source="scikit-learn (UCI, CC BY 4.0)",
        ood=("letters", "natural-patches", "noise"),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        "in",
        "Fashion-MNIST (Xiao et al. 2017), 28x28 grey, 10 classes; train 55,000 / val 5,000 (seeded, "
        "from the official training set) / test 10,000",
        lambda split="test", shape=None: load_fashion_mnist(split, shape, _INFO["fashion-mnist"].description),
        size="70,000 rows",
        source="Debian dataset-fashion-mnist (MIT)",
        ood=("letters-28", "digits-28", "natural-patches", "noise"),
    ),
    "letters-28": DatasetInfo(
        "letters-28",
        "near",
        "near-OOD for 28x28 sets: letters A-Z, a-z in DejaVu fonts framed like EMNIST (constructed)",
        lambda split="test", shape=None: make_letters_28(split, shape, description=_INFO["letters-28"].description),
        size="520 rows/split",
        source="made here (DejaVu fonts)",
        generic=False,
    ),
    "digits-28": DatasetInfo(
        "digits-28",
        "near",
        "near-OOD for 28x28 sets: the 8x8 digits up-sampled and framed like MNIST (constructed)",
        lambda split="test", shape=None: make_digits_28(split, shape, description=_INFO["digits-28"].description),
        size="500 rows/split",
        source="made here (sklearn digits)",
        generic=False,
    ),
    "letters": DatasetInfo(
        "letters",
        "near",
        "near-OOD: letters A-Z rendered in DejaVu fonts, reduced like the digits",
        _letters,
        size="520 rows/split",
        source="made here (DejaVu fonts)",
    ),
    "natural-patches": DatasetInfo(
        "natural-patches",
        "far",
        "far-OOD: grey patches of scikit-learn's sample photographs",
        _natural_patches,
        size="500 rows/split",
        source="made here (sklearn photos)",
    ),
    "noise": DatasetInfo(
        "noise",
        "far",
        "far-OOD: uniform noise and random Gaussian blobs",
        _noise,
        size="500 rows/split",
        source="made here (seeded)",
    ),
}


def register_dataset(info: DatasetInfo) -> None:
    """Add an embedded dataset (the text sets register themselves this way)."""
    if info.name in _INFO:
        raise ValueError(f"zoo dataset {info.name!r} already exists")
    _INFO[info.name] = info


def dataset_names() -> list[str]:
    return sorted(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _INFO:
        raise UnknownNameError(f"unknown zoo dataset {name!r}; available: {', '.join(dataset_names())}")
    return _INFO[name]


TextSetName = Literal["mr", "tweets", "nyt", "amazon"]
"""The embedded text sets (``load_dataset`` is typed to return a ``TextDataset`` for these)."""


# A name known only at run time is typed as an image set (the overlap mypy reports): code that takes
# either modality checks dataset_info(name).modality and calls load_text_dataset for text.
@overload
def load_dataset(name: TextSetName, split: str = "test", shape: None = None) -> TextDataset: ...  # type: ignore[overload-overlap]
@overload
def load_dataset(name: str, split: str = "test", shape: tuple[int, int, int] | None = None) -> ArrayDataset: ...
def load_dataset(
    name: str, split: str = "test", shape: tuple[int, int, int] | None = None
) -> ArrayDataset | TextDataset:
    """An embedded dataset: an :class:`~mlsafety.core.ArrayDataset` of images or a ``TextDataset``.

    Args:
        name: see :func:`dataset_names` (``dataset_info(name).modality`` says which kind it is);
            a text set's name known only at run time is better loaded with :func:`load_text_dataset`,
            which is typed for it.
        split: ``train``, ``val`` or ``test`` (``all`` for digits and the text sets); image OOD sets
            draw a different, deterministic sample per split.
        shape: (C, H, W) to make an image OOD set at another image shape (digits exist only at
            1x8x8; text sets take none).
    """
    return dataset_info(name).make(split=split, shape=shape)  # type: ignore[no-any-return]


def load_text_dataset(name: str, split: str = "test") -> TextDataset:
    """An embedded text set (``mr``, ``tweets``, ``nyt``, ``amazon``) as a ``TextDataset``."""
    info = dataset_info(name)
    if info.modality != "text":
        texts = ", ".join(n for n in dataset_names() if _INFO[n].modality == "text")
        raise InputError(f"zoo dataset {name!r} holds {info.modality}s, not text; text sets: {texts}")
    data: TextDataset = info.make(split=split, shape=None)
    return data


def ood_names(modality: str = "image", data: str | None = None) -> list[str]:
    """The OOD sets an audit uses by default.

    Args:
        modality: ``"image"`` or ``"text"``.
        data: the zoo in-distribution set of the audit: its own OOD sets (``DatasetInfo.ood``, in their
            order) when it names them. None, a set that names none, or a name outside the zoo: the
            generic OOD sets of ``modality``, sorted.
    """
    if data is not None and data in _INFO and _INFO[data].ood:
        return list(_INFO[data].ood)
    return [n for n in dataset_names() if _INFO[n].kind != "in" and _INFO[n].modality == modality and _INFO[n].generic]
