"""Datasets held in memory as tensors, input validation, and loaders for users' files."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mlsafety.core._errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images ``x`` (N, C, H, W) in [0, 1] and integer labels ``y`` (N,); OOD sets carry ``y = -1``.

    Args:
        x: float images in [0, 1].
        y: labels (N,): integers, or floats with whole values; stored as int64 (``-1`` for
            out-of-distribution data). Labels of another shape, NaN or fractional labels raise
            :class:`InputError` instead of being truncated.
        name: a short name used in hazards and reports.
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        description: one line for listings and reports.
        source: where the data came from, for error messages (e.g. ``"--data x.npz (test data)"``);
            default: the name.
        classes: the class names in label order (label ``i`` is ``classes[i]``) when the source names
            them (an image folder, a saved dataset's ``ClassLabel``, ``--classes``); None otherwise.
        classes_from: where that order came from (``"--classes"``, ``"classes.txt beside the data"``,
            ``"folder names, alphabetical"``...), for reports.
    """

    modality: Literal["image", "text"] = "image"

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        name: str = "data",
        kind: str = "in",
        description: str = "",
        source: str = "",
        classes: list[str] | None = None,
        classes_from: str = "",
    ) -> None:
        self.source = source or f"dataset {name!r}"
        self.classes = list(classes) if classes is not None else None
        self.classes_from = classes_from
        y = check_label_form(y, f"labels of {self.source}")
        if x.shape[0] != y.shape[0]:
            raise InputError(f"{self.source} has {x.shape[0]} inputs but {y.shape[0]} labels; give one label per input")
        self.x = x
        self.y = y
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

    def subset(self, index: torch.Tensor, name: str | None = None, source: str | None = None) -> ArrayDataset:
        return ArrayDataset(
            self.x[index],
            self.y[index],
            name or self.name,
            self.kind,
            self.description,
            source or self.source,
            self.classes,
            self.classes_from,
        )

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


def check_label_form(y: torch.Tensor, what: str = "labels") -> torch.Tensor:
    """Labels as int64 ``(N,)``; raise :class:`InputError` for another shape, NaN or fractional values.

    Float labels with whole values are accepted (``3.0`` is class 3); ``2.4`` is refused rather
    than truncated.
    """
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{what} must be a tensor, got {type(y).__name__}")
    if y.ndim != 1:
        raise InputError(f"{what} have shape {tuple(y.shape)}; y must be 1-D (N,): save it with y.reshape(-1)")
    if y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{what} must be integer class indices, got {y.dtype}; save y as integers 0..K-1")
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise InputError(f"{what} contain NaN or infinite values; give an integer class index for every input")
        frac = y != y.round()
        if frac.any():
            raise InputError(
                f"{what} must be whole numbers (found {float(y[frac][0]):g}); "
                "save y as integer class indices 0..K-1, not probabilities or scores"
            )
    return y.long()


def check_labels(y: torch.Tensor, num_classes: int, what: str = "labels") -> torch.Tensor:
    """Raise :class:`InputError` unless every label is an integer in [0, num_classes)."""
    y = check_label_form(y, what)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{what} must lie in [0, {num_classes}) for a model with {num_classes} classes "
            f"(found {int(y.min())}..{int(y.max())}); number the classes 0..{num_classes - 1} "
            "in the order of the model's outputs"
        )
    return y


def validate_dataset(
    ds: ArrayDataset,
    num_classes: int | None = None,
    channels: int | None = None,
    channels_from: str = "the model takes",
) -> None:
    """Check one dataset before an audit uses it; every message names ``ds.source``.

    Inputs must be finite floats (N, C, H, W) in [0, 1] with ``channels`` channels (when given);
    in-distribution labels (``ds.kind == "in"``) must be integers in [0, num_classes) (when
    given). OOD sets carry no labels (``-1``) and are not checked against the classes.
    ``channels_from`` says where the channel count comes from in the message (e.g.
    ``"--channels asks for"``).

    Raises:
        InputError: naming the problem, the source and the fix.
    """
    check_images(ds.x, f"inputs of {ds.source}")
    if channels is not None and int(ds.x.shape[1]) != channels:
        have = int(ds.x.shape[1])
        how = "convert them to grayscale" if channels == 1 else f"give images with {channels} channels"
        raise InputError(
            f"inputs of {ds.source} have {have} channel{'s' if have != 1 else ''} but {channels_from} "
            f"{channels}; {how} (shape (N, {channels}, H, W))"
        )
    if ds.kind == "in" and num_classes is not None:
        check_labels(ds.y, num_classes, f"labels of {ds.source}")


def load_npz(path: str | Path, name: str | None = None, kind: str = "in", source: str | None = None) -> ArrayDataset:
    """Load an ``.npz`` file with arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,).

    Channels-last arrays (N, H, W, C) with C of 1, 3 or 4 and a second dimension that cannot be a
    channel count are converted to (N, C, H, W); the dataset's description says so.

    ``x`` in [0, 1] floats, or uint8 in [0, 255] (divided by 255). ``y`` holds integer class
    indices (whole-valued floats are accepted, fractional ones refused); it may be missing for OOD
    sets, whose labels are always ``-1`` (``kind`` other than ``"in"``). Pickled object arrays are
    refused. ``source`` names the file in error messages (default: its path).
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise InputError(f"data file not found: {source}; give an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for a bad archive
        # numpy tries a file that is no zip archive as a pickle and then advises allow_pickle, as it does for object
        # arrays, which a user cannot act on (and should not: a pickle runs code)
        if not zipfile.is_zipfile(path):
            why = "it is not a .npz (zip) archive"
        elif "pickle" in str(exc):
            why = "it holds object arrays; save x and y as numeric arrays"
        else:
            why = str(exc)
        raise InputError(
            f"cannot read {source} as .npz with arrays x and y: {why}; save with np.savez(f, x=..., y=...)"
        ) from None
    if "x" not in arrays:
        raise InputError(
            f"{source} has no array named 'x' (found {sorted(arrays)}); save with np.savez(f, x=..., y=...)"
        )
    xa = arrays["x"]
    if xa.dtype == np.bool_ or not np.issubdtype(xa.dtype, np.number) or np.issubdtype(xa.dtype, np.complexfloating):
        raise InputError(f"inputs of {source} have dtype {xa.dtype}; save x as float32 in [0, 1] or uint8")
    description = f"arrays from {path.name}"
    if xa.ndim == 3:
        xa = xa[:, None]
    elif xa.ndim == 4 and xa.shape[-1] in (1, 3, 4) and xa.shape[1] not in (1, 3, 4):
        xa = xa.transpose(0, 3, 1, 2)  # channels last (N, H, W, C), as PIL and TensorFlow save images
        description += f" (converted from channels-last (N, H, W, C) = {arrays['x'].shape} to (N, C, H, W))"
    if xa.ndim != 4:
        raise InputError(
            f"inputs of {source} have shape {tuple(xa.shape)}; save x as images (N, C, H, W) (or (N, H, W) for "
            "one channel)"
        )
    x = torch.from_numpy(np.ascontiguousarray(xa))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if kind != "in":
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
    elif "y" in arrays:
        ya = arrays["y"]
        if (
            ya.dtype == np.bool_
            or not np.issubdtype(ya.dtype, np.number)
            or np.issubdtype(ya.dtype, np.complexfloating)
        ):
            raise InputError(f"labels of {source} have dtype {ya.dtype}; save y as integer class indices 0..K-1")
        ya = ya.astype(np.float64) if np.issubdtype(ya.dtype, np.floating) else ya.astype(np.int64)
        y = torch.from_numpy(np.ascontiguousarray(ya))
    else:
        raise InputError(f"{source} has no array named 'y'; in-distribution data needs labels")
    check_images(x, f"inputs of {source}")
    return ArrayDataset(x, y, name=name or path.stem, kind=kind, description=description, source=source)


CLASS_FILES = ("classes.txt", "classes.json")
"""Files that give a data folder's class order: one name per line, or a JSON list (or name -> index)."""


def read_class_file(file: str | Path) -> list[str]:
    """Class names in label order from ``classes.txt`` (one per line, blank lines skipped) or ``classes.json``
    (a list of names, or an object mapping each name to its index 0..K-1).

    Raises:
        InputError: an unreadable file, an empty or duplicated list, indices that are not 0..K-1.
    """
    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the class list {file}: {exc}") from None
    if file.suffix == ".json":
        import json

        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"the class list {file} is not valid JSON ({exc}); give a list of class names") from None
        if isinstance(raw, dict):
            index = {str(k): v for k, v in raw.items()}
            if sorted(v for v in index.values() if isinstance(v, int)) != list(range(len(index))):
                raise InputError(f"the class list {file} maps names to {sorted(index.values())}; use indices 0..K-1")
            names = sorted(index, key=lambda k: index[k])
        elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            names = list(raw)
        else:
            raise InputError(f"the class list {file} must be a JSON list of names or an object name -> index")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return check_class_names(names, str(file))


def check_class_names(names: list[str], where: str) -> list[str]:
    """``names`` checked: at least two, none empty, none repeated."""
    names = [n.strip() for n in names]
    if len(names) < 2 or any(not n for n in names):
        raise InputError(f"{where}: give at least two non-empty class names in the order of the model's outputs")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{where}: class names repeated: {', '.join(repeated)}; name each class once")
    return names


def find_class_file(folder: Path) -> Path | None:
    """``classes.txt`` / ``classes.json`` inside ``folder``, else beside it; None when there is none."""
    for where in (folder, folder.parent):
        for name in CLASS_FILES:
            if (where / name).is_file():
                return where / name
    return None


def load_image_folder(
    path: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    name: str | None = None,
    kind: str = "in",
    source: str | None = None,
    classes: list[str] | None = None,
) -> ArrayDataset:
    """Load images from ``path/<class>/<image>``, resized to ``size``.

    The class order (label ``i`` is ``classes[i]``) is ``classes`` when given, else the one a
    ``classes.txt`` / ``classes.json`` inside or beside the folder gives (:func:`read_class_file`), else
    the folder names sorted (which is rarely the order a model was trained in: the dataset's
    ``classes_from`` says which rule applied, so reports can show it). A folder that the class list does
    not name is refused. Every image is converted to ``channels`` channels (1: grayscale with PIL's ITU-R
    601-2 luma, 3: RGB), whatever its mode on disk (16-bit grey images keep their levels, see
    :func:`image_array`). For OOD sets (``kind != "in"``) images may also lie
    directly in ``path``; labels are then -1. ``source`` names the folder in error messages.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    source = source or str(path)
    if not path.is_dir():
        raise InputError(f"image folder not found: {source}")
    if channels not in (1, 3):
        raise InputError(f"image folders are read with 1 or 3 channels, not {channels}; use --channels 1 or 3")
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image size must be two positive integers H W, got {tuple(size)}; e.g. --image-size 32 32")
    folders = {p.name: p for p in sorted(path.iterdir()) if p.is_dir()}
    classes_from = "--classes"
    if classes is None and kind == "in":
        found = find_class_file(path)
        if found is not None:
            classes, classes_from = read_class_file(found), f"{found.name} at {found}"
    if classes is None:
        names, classes_from = sorted(folders), "folder names, alphabetical (no --classes or classes.txt given)"
    else:
        names = check_class_names(list(classes), classes_from)
        unknown = sorted(set(folders) - set(names))
        if unknown and kind == "in":
            raise InputError(
                f"{source}: folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not in the class list of "
                f"{classes_from} ({', '.join(names)}); add {'them' if len(unknown) > 1 else 'it'} to the list"
            )
    items: list[tuple[Path, int]] = []
    for label, cls in enumerate(names):
        folder = folders.get(cls)
        if folder is not None:
            items += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if kind != "in":
        items = [(f, -1) for f, _ in items]
        items += [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise InputError(f"no images found in {source}; expected {path}/<class name>/<image>.png")
    arrays = []
    for f, _ in items:
        try:
            with Image.open(f) as img:
                arrays.append(image_array(img, channels, size, f"image {f} of {source}"))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {f} of {source}: {exc}; remove or replace the file") from None
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    y = torch.tensor([label for _, label in items], dtype=torch.long)
    return ArrayDataset(
        x.contiguous(),
        y,
        name=name or path.name,
        kind=kind,
        description=f"images from {path}",
        source=source,
        classes=names if kind == "in" else None,
        classes_from=classes_from if kind == "in" else "",
    )


HF_DATASET_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
"""Files ``save_to_disk`` writes: a folder holding one of them is read as a saved Hugging Face dataset."""


def is_hf_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in HF_DATASET_MARKERS)


def image_array(img: Any, channels: int, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """A PIL image as float32 in [0, 1], ``(H, W)`` for 1 channel or ``(H, W, 3)`` for 3, resized to ``size``
    (H, W) with PIL's bilinear filter when given.

    8-bit images are converted with PIL (grey by ITU-R 601-2 luma) and divided by 255; 16-bit grey images
    (PIL modes ``I;16*``, or ``I`` from a PNG) are divided by 65535 (PIL's ``convert("L")`` would clip every
    level above 255 to white). 32-bit integer or float images, which state no range, are refused.
    """
    from PIL import Image

    target = None if size is None else (size[1], size[0])
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        grey = img.convert("F")
        if target is not None and grey.size != target:
            grey = grey.resize(target, Image.Resampling.BILINEAR)
        levels = np.asarray(grey, dtype=np.float32) / np.float32(65535)
        return levels if channels == 1 else np.repeat(levels[..., None], 3, axis=-1)
    if img.mode in ("I", "F"):
        kind = "integer" if img.mode == "I" else "float"
        raise InputError(
            f"{where} is a 32-bit {kind} image (PIL mode {img.mode}), which states no range of values; "
            "save it as an 8- or 16-bit image"
        )
    out = img.convert("L" if channels == 1 else "RGB")
    if target is not None and out.size != target:
        out = out.resize(target, Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32) / np.float32(255)


def _pil_to_array(value: Any, channels: int, size: tuple[int, int] | None, where: str) -> np.ndarray:
    from PIL import Image

    if isinstance(value, np.ndarray):  # a dataset in numpy format: a 16-bit grey image comes as uint16
        if not (value.dtype == np.uint8 or (value.dtype == np.uint16 and value.ndim == 2)):
            whole = value.dtype.kind in "biu" or (value.dtype.kind == "f" and bool((value == np.round(value)).all()))
            if not (whole and value.size and value.min() >= 0 and value.max() <= 255):
                raise InputError(
                    f"{where} holds values outside whole numbers 0..255 (an array of {value.dtype}), which "
                    "state no range; save the images as datasets.Image() (8- or 16-bit)"
                )
            value = value.astype(np.uint8)
        value = Image.fromarray(value)
    if not isinstance(value, Image.Image):
        raise InputError(f"{where} is a {type(value).__name__}, not an image; give a column of datasets.Image()")
    return image_array(value, channels, size, where)


def load_hf_image_dataset(
    path: str | Path,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    split: str | None = None,
    label: str = "label",
    name: str | None = None,
    kind: str = "in",
    source: str | None = None,
    classes: list[str] | None = None,
) -> ArrayDataset:
    """Load an image dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (offline).

    The image column is the first of feature type ``datasets.Image`` (else one named ``image`` or
    ``img``); every image is converted to ``channels`` channels and, when ``size`` is given, resized to
    it (without ``size`` all images must share one size). Labels come from column ``label`` (ignored for
    OOD sets, whose labels are -1); a ``ClassLabel`` feature's names give the class order unless
    ``classes`` is given.

    Args:
        path: the folder written by ``save_to_disk``.
        size: (H, W) to resize to; None keeps the images' own size.
        channels: 1 (grayscale) or 3 (RGB).
        split: the split of a ``DatasetDict``; None: the only split, else an error naming them.
        label, name, kind, source, classes: as for :func:`load_image_folder`.

    Raises:
        InputError: not a saved dataset, an unknown split, no image or label column, an unreadable image
            (naming its row), an image given as an array (numpy format) that is neither uint16 grey (16-bit
            levels) nor whole numbers 0..255, images of different sizes without ``size``.
    """
    import datasets

    path = Path(path)
    source = source or str(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder: bad state.json, unreadable arrow files, ...
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{source} could not be read as a saved dataset ({type(exc).__name__}: {detail})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        if split not in loaded:
            if split is None and len(splits) == 1:
                split = splits[0]
            else:
                raise InputError(f"{source} has splits {splits} but not {split!r}; give one split's folder "
                                 f"({path / splits[0]})")  # fmt: skip
        table = loaded[split]
        source = f"{source} (split {split!r})"
    else:
        table = loaded
    features = table.features
    image_cols = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    image_cols += [c for c in ("image", "img") if c in features and c not in image_cols]
    if not image_cols:
        raise InputError(f"{source} has no image column (columns: {', '.join(features)}); save the images as "
                         "datasets.Image()")  # fmt: skip
    column = image_cols[0]
    arrays = []
    for i in range(len(table)):
        try:
            value = table[i][column]
            arrays.append(_pil_to_array(value, channels, size, f"row {i} of {source}"))
        except InputError:
            raise
        except Exception as exc:  # a damaged image in the table
            raise InputError(f"cannot read the image in row {i} of {source}: {exc}; remove or replace it") from None
    if not arrays:
        raise InputError(f"{source} holds no images; give at least one")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"images of {source} have different sizes {sorted(shapes)[:3]}; pass --image-size H W")
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    names: list[str] | None = None
    classes_from = ""
    if kind == "in":
        if label not in features:
            raise InputError(f"{source} has no label column {label!r} (columns: {', '.join(features)})")
        y = torch.as_tensor(np.asarray(table[label]), dtype=torch.float64)
        feature = features[label]
        if classes is not None:
            names, classes_from = check_class_names(list(classes), "--classes"), "--classes"
        elif isinstance(feature, datasets.ClassLabel):
            names, classes_from = list(feature.names), f"the dataset's ClassLabel feature {label!r}"
    else:
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
    return ArrayDataset(
        x.contiguous(),
        y,
        name=name or path.name,
        kind=kind,
        description=f"images of saved dataset {path.name}",
        source=source,
        classes=names,
        classes_from=classes_from,
    )
