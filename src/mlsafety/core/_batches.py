"""One way in for data: every public function that takes data accepts the same forms.

The accepted forms (:data:`DataLike`):

* an :class:`~mlsafety.core.ArrayDataset` (the library's own, tensors ``.x`` and ``.y``), or a
  :class:`~mlsafety.core.TextDataset` (its batches are ``(Texts, y)``);
* any map-style or iterable torch ``Dataset`` whose items are ``(x, y)`` pairs (e.g.
  ``TensorDataset(x, y)``, a torchvision dataset with a ``ToTensor`` transform);
* a ``DataLoader`` (or any other iterable) of ``(x, y)`` batches;
* a pair of tensors ``(x, y)``.

Where labels are optional (an OOD detector's fit, an unlabelled OOD set), items and batches may also
be ``x`` alone, and a tensor ``x`` is accepted; the labels are then ``-1``, the library's mark for
"no label".

:func:`as_array_dataset` gathers any of these into an :class:`ArrayDataset` (for methods that need
all inputs at once, e.g. trojan scanners); :func:`iter_batches` streams them batch by batch without
gathering (for evaluations over large loaders). Anything else is refused with one line naming the
forms accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeAlias, overload

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from mlsafety.core._data import ArrayDataset
from mlsafety.core._errors import InputError
from mlsafety.core._text import TextDataset, Texts

DataLike: TypeAlias = (
    "ArrayDataset | Dataset[Any] | DataLoader[Any] | Iterable[Any] | tuple[torch.Tensor, torch.Tensor] | torch.Tensor"
)
"""Data a public function accepts: an ArrayDataset, a torch Dataset of ``(x, y)``, a DataLoader of
``(x, y)`` batches, or tensors ``(x, y)`` (``x`` alone where labels are optional)."""

FORMS = "an ArrayDataset, a torch Dataset of (x, y) pairs, a DataLoader of (x, y) batches, or tensors (x, y)"
TEXT_FORM = "give texts as a TextDataset (mlsafety.core.TextDataset, load_text_csv, load_text_jsonl, load_hf_dataset)"


def _or_texts(kind: str) -> str:
    return f", or if they are texts, {TEXT_FORM}" if kind == "str" else ""


_COLLATE_BATCH = 256


def _tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _labels(y: Any, n: int, what: str) -> torch.Tensor:
    t = _tensor(y)
    if t is None and isinstance(y, (int, np.integer)):
        t = torch.tensor([int(y)])
    if t is None:
        raise InputError(f"{what}: labels must be integer tensors, got {type(y).__name__}; give {FORMS}")
    t = t.reshape(-1) if t.ndim == 2 and t.shape[1] == 1 else t
    if t.ndim != 1 or t.shape[0] != n:
        raise InputError(f"{what}: {n} inputs but labels of shape {tuple(t.shape)}; give one integer label per input")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not torch.equal(t, t.round()):
            raise InputError(f"{what}: labels must be integers (class indices), found fractional values")
    elif t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{what}: labels must be integer class indices, got dtype {t.dtype}")
    return t.long()


def _collate(what: str) -> Any:
    """``default_collate`` that names the problem when a Dataset's items are not tensors, arrays or numbers."""

    def collate(items: list[Any]) -> Any:
        try:
            return default_collate(items)
        except TypeError:
            kind = type(items[0][0] if isinstance(items[0], (tuple, list)) and items[0] else items[0]).__name__
            raise InputError(
                f"{what}: the inputs are {kind} values; make them tensors (e.g. a ToTensor transform){_or_texts(kind)}"
            ) from None

    return collate


def _split(batch: Any, what: str, labelled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` of one batch; ``y`` is None for an unlabelled batch (refused when ``labelled``)."""
    x = _tensor(batch)
    y: Any = None
    if x is None and isinstance(batch, (tuple, list)) and batch:
        x = _tensor(batch[0])
        y = batch[1] if len(batch) > 1 else None
    if x is None:
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], str):
            raise InputError(f"{what}: the inputs are str values; {TEXT_FORM}")
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (tuple, list)) and batch[0]:
            kind = type(batch[0][0]).__name__  # what default_collate left as a list: strings, images...
            raise InputError(
                f"{what}: the inputs are {kind} values; make them tensors (e.g. a ToTensor transform){_or_texts(kind)}"
            )
        raise InputError(f"{what}: batches must be tensors x or pairs (x, y), got {type(batch).__name__}; give {FORMS}")
    if x.ndim == 0:
        raise InputError(f"{what}: inputs must have a batch dimension, got a scalar")
    if y is None:
        if labelled:
            raise InputError(f"{what}: has inputs but no labels; give (x, y) pairs with integer labels")
        return x, None
    return x, _labels(y, x.shape[0], what)


@overload
def iter_batches(  # type: ignore[overload-overlap]  # a TextDataset is also a Dataset
    data: TextDataset, batch_size: int = 256, what: str = "data", labelled: bool = True
) -> Iterator[tuple[Texts, torch.Tensor | None]]: ...


@overload
def iter_batches(
    data: DataLike, batch_size: int = 256, what: str = "data", labelled: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]: ...


def iter_batches(
    data: DataLike | TextDataset, batch_size: int = 256, what: str = "data", labelled: bool = True
) -> Iterator[tuple[torch.Tensor | Texts, torch.Tensor | None]]:
    """Stream ``data`` as ``(x, y)`` batches of at most ``batch_size`` inputs (a loader keeps its own).

    Args:
        data: any form of :data:`DataLike`.
        batch_size: inputs per batch for data held in memory (a DataLoader's batches pass through).
        what: the name of the argument, for error messages.
        labelled: refuse data without labels; when False, unlabelled batches give ``y = None``.

    Raises:
        InputError: ``data`` is of none of the accepted forms, or its batches are not ``x`` / ``(x, y)``.
    """
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, (ArrayDataset, TextDataset)):
        yield from data.batches(batch_size)
        return
    if isinstance(data, (torch.Tensor, Texts)):
        if labelled:
            raise InputError(f"{what}: got inputs without labels; give {FORMS}")
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size], None
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and _tensor(data[0]) is not None:
        x, y = _split(data, what, labelled)
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]
        return
    if isinstance(data, DataLoader):
        batches: Iterable[Any] = data
    elif isinstance(data, Dataset):
        if not isinstance(data, IterableDataset) and not isinstance(data, Sized):
            raise InputError(f"{what}: a map-style Dataset must define __len__; give {FORMS}")
        batches = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_collate(what))
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        batches = data
    else:
        raise InputError(f"{what}: cannot read data of type {type(data).__name__}; give {FORMS}")
    for batch in batches:
        yield _split(batch, what, labelled)


@overload
def as_array_dataset(  # type: ignore[overload-overlap]  # a TextDataset is also a Dataset
    data: TextDataset, what: str = "data", labelled: bool = True, name: str | None = None
) -> TextDataset: ...


@overload
def as_array_dataset(
    data: DataLike, what: str = "data", labelled: bool = True, name: str | None = None
) -> ArrayDataset: ...


def as_array_dataset(
    data: DataLike | TextDataset, what: str = "data", labelled: bool = True, name: str | None = None
) -> ArrayDataset | TextDataset:
    """``data`` as an :class:`ArrayDataset` (returned as is when it already is one, or a :class:`TextDataset`).

    A Dataset or DataLoader is read once, in its own order (use ``shuffle=False`` for results that
    match the same data given as tensors).

    Args:
        data: any form of :data:`DataLike`.
        what: the name of the argument, for error messages.
        labelled: refuse data without labels; when False, missing labels become ``-1``.
        name: the dataset's name (default: the source's ``name`` attribute, else ``what``).

    Raises:
        InputError: ``data`` is of none of the accepted forms, has no inputs, or (when
            ``labelled``) no labels.

    Example:
        >>> as_array_dataset(DataLoader(TensorDataset(x, y), batch_size=64)).x.shape
    """
    if isinstance(data, (ArrayDataset, TextDataset)):
        return data
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for xb, yb in iter_batches(data, _COLLATE_BATCH, what, labelled):
        xs.append(xb)
        if yb is None:
            yb = torch.full((xb.shape[0],), -1, dtype=torch.long)
        ys.append(yb)
    if not xs or sum(int(x.shape[0]) for x in xs) == 0:
        raise InputError(f"{what} is empty: give at least one input")
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise InputError(f"{what}: inputs of different shapes {sorted(shapes)}; resize them to one shape")
    x = torch.cat(xs)
    if x.dtype == torch.uint8:
        raise InputError(f"{what}: inputs are uint8; give float images in [0, 1] (divide by 255)")
    src_name = getattr(data, "name", None)
    label = name or (src_name if isinstance(src_name, str) else what)
    return ArrayDataset(x, torch.cat(ys), name=label)
