"""Datasets held in memory as tensors, input validation, and loaders for users' files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mlsafety.core._errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images ``x`` (N, C, H, W) in [0, 1] and integer labels ``y`` (N,); OOD sets carry ``y = -1``.

    Args:
        x: float images in [0, 1].
        y: int64 labels (``-1`` for out-of-distribution data).
        name: a short name used in hazards and reports.
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        description: one line for listings and reports.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        name: str = "data",
        kind: str = "in",
        description: str = "",
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise InputError(f"dataset {name!r}: {x.shape[0]} inputs but {y.shape[0]} labels")
        self.x = x
        self.y = y.long()
        self.name = name
        self.kind = kind
        self.description = description

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def is_ood(self) -> bool:
        return self.kind != "in"

    def subset(self, index: torch.Tensor, name: str | None = None) -> ArrayDataset:
        return ArrayDataset(self.x[index], self.y[index], name or self.name, self.kind, self.description)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r}, n={len(self)}, shape={tuple(self.x.shape[1:])}, kind={self.kind!r})"


def check_images(x: torch.Tensor, what: str = "inputs") -> torch.Tensor:
    """Raise :class:`InputError` unless ``x`` is a finite float tensor (N, C, H, W) in [0, 1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{what} must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4:
        raise InputError(f"{what} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{what} are empty: give at least one input")
    if not torch.isfinite(x).all():
        raise InputError(f"{what} contain NaN or infinite values; clean the data first")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{what} must lie in [0, 1] (found [{lo:.3g}, {hi:.3g}]); scale pixels to [0, 1] and "
            "let the model normalise them (mlsafety.core.Normalize)"
        )
    return x


def check_labels(y: torch.Tensor, num_classes: int, what: str = "labels") -> torch.Tensor:
    """Raise :class:`InputError` unless every label is an integer in [0, num_classes)."""
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise InputError(f"{what} must be integers")
        y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{what} must lie in [0, {num_classes}) for a model with {num_classes} classes "
            f"(found {int(y.min())}..{int(y.max())})"
        )
    return y


def load_npz(path: str | Path, name: str | None = None, kind: str = "in") -> ArrayDataset:
    """Load an ``.npz`` file with arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,).

    ``x`` in [0, 1] floats, or uint8 in [0, 255] (divided by 255). ``y`` may be missing for OOD
    sets (then ``kind`` must not be ``"in"``). Pickled object arrays are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for a bad archive
        raise InputError(f"cannot read {path} as .npz with arrays x and y: {exc}") from None
    if "x" not in arrays:
        raise InputError(f"{path} has no array named 'x' (found {sorted(arrays)}); save with np.savez(f, x=..., y=...)")
    xa = arrays["x"]
    if xa.ndim == 3:
        xa = xa[:, None]
    x = torch.from_numpy(np.ascontiguousarray(xa))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if "y" in arrays:
        y = torch.from_numpy(np.ascontiguousarray(arrays["y"])).long()
    elif kind != "in":
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
    else:
        raise InputError(f"{path} has no array named 'y'; in-distribution data needs labels")
    check_images(x, f"inputs in {path}")
    return ArrayDataset(x, y, name=name or path.stem, kind=kind, description=f"arrays from {path.name}")


def load_image_folder(
    path: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    name: str | None = None,
    kind: str = "in",
) -> ArrayDataset:
    """Load images from ``path/<class>/<image>`` (classes sorted by folder name), resized to ``size``.

    For OOD sets (``kind != "in"``) images may also lie directly in ``path``; labels are then -1.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"image folder not found: {path}")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    items: list[tuple[Path, int]] = []
    for label, folder in enumerate(classes):
        items += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if kind != "in":
        items = [(f, -1) for f, _ in items]
        items += [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise InputError(f"no images found in {path}; expected {path}/<class name>/<image>.png")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f, _ in items:
        try:
            with Image.open(f) as img:
                arrays.append(np.asarray(img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {f}: {exc}") from None
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    y = torch.tensor([label for _, label in items], dtype=torch.long)
    return ArrayDataset(x.contiguous(), y, name=name or path.name, kind=kind, description=f"images from {path}")
