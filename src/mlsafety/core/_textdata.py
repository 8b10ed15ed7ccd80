"""Loaders for users' text files (CSV, JSON Lines, a saved Hugging Face dataset) and their validation.

Each loader returns a :class:`~mlsafety.core.TextDataset` and refuses bad input with one line that
names the file, the row and the fix: a file that is not UTF-8, a missing column (naming the columns
found), an empty text, a label that is not an integer, an empty file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlsafety.core._data import check_labels
from mlsafety.core._errors import InputError
from mlsafety.core._text import TextDataset


def _read_utf8(path: Path, source: str) -> str:
    if not path.is_file():
        raise InputError(f"data file not found: {source}; give an existing file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it with UTF-8 encoding"
        ) from None
    if not content.strip():
        raise InputError(f"{source} is empty; give a file with a header and one row per text")
    return content


def _label(value: Any, where: str, column: str) -> int:
    """An integer class index from a cell or JSON value (whole-valued floats accepted)."""
    if value is None:
        raise InputError(f"{where} has no value in {column!r}; give every row an integer label")
    if isinstance(value, bool):
        raise InputError(f"{where} has label {value!r}, not an integer class index; number the classes 0..K-1")
    if isinstance(value, int):
        return _in_range(value, where)
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            return _in_range(int(value.strip()), where)
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                number = None
    if number is None or not math.isfinite(number) or number != round(number):
        raise InputError(f"{where} has label {value!r}, not an integer class index; number the classes 0..K-1")
    return _in_range(int(number), where)


def _in_range(value: int, where: str) -> int:
    if not -(2**63) <= value < 2**63:
        raise InputError(f"{where} has label {value}, too large for a class index; number the classes 0..K-1")
    return value


def _text(value: Any, where: str, column: str) -> str:
    if value is None:
        raise InputError(f"{where} has no value in {column!r}; give every row a text")
    if not isinstance(value, str):
        raise InputError(f"{where} has a {type(value).__name__} in {column!r}, not a text; give a string")
    if not value.strip():
        raise InputError(f"{where} has an empty text in {column!r}; remove the row or give it content")
    return value


_FIELD_LIMIT = 2**31 - 1
"""The largest field the csv module accepts on every platform (a C long)."""


def _option(options: Mapping[str, str] | None, arg: str) -> str:
    """How the caller names setting ``arg`` (``text`` / ``label``) in a message."""
    return (options or {}).get(arg, f"{arg}=")


def _dataset(
    texts: list[str], labels: list[int] | None, name: str, kind: str, source: str, description: str
) -> TextDataset:
    if not texts:
        raise InputError(f"{source} has no rows; give at least one text")
    y = None if labels is None or kind != "in" else torch.tensor(labels, dtype=torch.long)
    return TextDataset(texts, y, name=name, kind=kind, description=description, source=source)


def load_text_csv(
    path: str | Path,
    text: str = "text",
    label: str | None = "label",
    name: str | None = None,
    kind: str = "in",
    source: str | None = None,
    delimiter: str = ",",
    options: Mapping[str, str] | None = None,
) -> TextDataset:
    """Load texts and labels from a UTF-8 CSV file with a header row (read with the stdlib ``csv`` module).

    Args:
        path: the file.
        text: the column holding the texts.
        label: the column holding integer class indices; None for unlabelled data (labels ``-1``).
            OOD sets (``kind`` other than ``"in"``) need no label column; their labels are ``-1``.
        name: the dataset's name (default: the file's stem).
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        source: names the file in error messages (default: its path).
        delimiter: the field separator (``"\\t"`` for TSV).
        options: how the caller names the ``text`` / ``label`` settings in messages (e.g.
            ``{"text": "--text-column"}``); default: the keywords ``text=`` / ``label=``.

    Raises:
        InputError: a missing or non-UTF-8 file, no header or rows, a missing column, an empty text,
            a label that is not an integer.
    """
    path = Path(path)
    source = source or str(path)
    content = _read_utf8(path, source)
    # no cap on a field's size: an over-long text is truncated by the model's tokenizer (and counted), not
    # refused by the csv module's 131,072-character default
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    found = [c for c in reader.fieldnames or [] if c is not None]
    want_label = label is not None and kind == "in"
    for column in [text] + ([label] if want_label and label is not None else []):
        if column not in found:
            what = "texts" if column == text else "labels"
            arg = "text" if column == text else "label"
            raise InputError(
                f"{source} has no column {column!r} (found {found}); "
                f"pass {_option(options, arg)} naming the column with the {what}"
            )
    texts: list[str] = []
    labels: list[int] = []
    try:
        for row in reader:
            where = f"row {reader.line_num} of {source}"
            texts.append(_text(row.get(text), where, text))
            if want_label and label is not None:
                labels.append(_label(row.get(label), where, label))
    except csv.Error as exc:
        raise InputError(f"cannot read {source} as CSV at line {reader.line_num}: {exc}") from None
    return _dataset(texts, labels if want_label else None, name or path.stem, kind, source, f"texts from {path.name}")


def load_text_jsonl(
    path: str | Path,
    text: str = "text",
    label: str | None = "label",
    name: str | None = None,
    kind: str = "in",
    source: str | None = None,
    options: Mapping[str, str] | None = None,
) -> TextDataset:
    """Load texts and labels from a UTF-8 JSON Lines file: one object per line (blank lines skipped).

    Args:
        path: the file.
        text: the key holding the text.
        label: the key holding the integer class index; None for unlabelled data (labels ``-1``).
            OOD sets (``kind`` other than ``"in"``) need no labels; theirs are ``-1``.
        name: the dataset's name (default: the file's stem).
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        source: names the file in error messages (default: its path).
        options: how the caller names the ``text`` / ``label`` settings in messages.

    Raises:
        InputError: a missing or non-UTF-8 file, a line that is not a JSON object, a missing key,
            an empty text, a label that is not an integer.
    """
    path = Path(path)
    source = source or str(path)
    content = _read_utf8(path, source)
    want_label = label is not None and kind == "in"
    texts: list[str] = []
    labels: list[int] = []
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+2029 and U+0085, which JSON leaves raw in strings
    for number, raw_line in enumerate(content.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"line {number} of {source}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} is not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise InputError(f"{where} is a JSON {type(record).__name__}, not an object; write one object per line")
        keys = [text] + ([label] if want_label and label is not None else [])
        for key in keys:
            if key not in record:
                arg = "text" if key == text else "label"
                raise InputError(
                    f"{where} has no key {key!r} (found {sorted(record)}); pass {_option(options, arg)} naming the key"
                )
        texts.append(_text(record[text], where, text))
        if want_label and label is not None:
            labels.append(_label(record[label], where, label))
    return _dataset(texts, labels if want_label else None, name or path.stem, kind, source, f"texts from {path.name}")


def load_hf_dataset(
    path: str | Path,
    split: str | None = None,
    text: str = "text",
    label: str | None = "label",
    name: str | None = None,
    kind: str = "in",
    source: str | None = None,
    options: Mapping[str, str] | None = None,
) -> TextDataset:
    """Load a Hugging Face dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (offline).

    Args:
        path: the folder written by ``save_to_disk``.
        split: the split of a ``DatasetDict`` (e.g. ``"test"``); None: the only split, or an error
            naming the splits when there are several.
        text: the column holding the texts.
        label: the column holding integer class indices; None for unlabelled data (labels ``-1``).
        name: the dataset's name (default: the folder's name, with the split).
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        source: names the folder in error messages (default: its path).
        options: how the caller names the ``text`` / ``label`` settings in messages.

    Raises:
        InputError: ``datasets`` is not installed, the folder is missing or not a saved dataset, an
            unknown split, a missing column, an empty text, a label that is not an integer.
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_dir():  # first: a mistyped path is the likelier fault, and its fix is not an install
        raise InputError(f"dataset folder not found: {source}; give the folder written by save_to_disk")
    try:
        import datasets
    except ImportError:
        raise InputError(
            "reading a saved Hugging Face dataset needs the 'datasets' package; install it: pip install datasets"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputError(f"{source} is not a dataset saved with save_to_disk: {exc}") from None
    except Exception as exc:  # a corrupted folder: bad state.json, unreadable arrow files, ...
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(
            f"{source} could not be read as a saved dataset ({type(exc).__name__}: {detail}); "
            "save it again with save_to_disk"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise InputError(
                f"{source} has splits {splits}; give one split's folder ({Path(path) / splits[0]}) "
                "or pass split= one of them"
            )
        table = loaded[split]
        source = f"{source} (split {split!r})"
    else:
        if split is not None:
            raise InputError(f"{source} is a single dataset without splits; drop split={split!r}")
        table = loaded
    found = list(table.column_names)
    want_label = label is not None and kind == "in"
    for column in [text] + ([label] if want_label and label is not None else []):
        if column not in found:
            arg = "text" if column == text else "label"
            raise InputError(
                f"{source} has no column {column!r} (found {found}); pass {_option(options, arg)} naming the column"
            )
    texts = [_text(value, f"row {i} of {source}", text) for i, value in enumerate(table[text])]
    labels = (
        [_label(value, f"row {i} of {source}", label) for i, value in enumerate(table[label])]
        if want_label and label is not None
        else None
    )
    default_name = path.name if split is None else f"{path.name}-{split}"
    return _dataset(texts, labels, name or default_name, kind, source, f"saved dataset {path.name}")


def validate_text_dataset(ds: TextDataset, num_classes: int | None = None) -> None:
    """Check one text dataset before an audit uses it; every message names ``ds.source``.

    Texts must be non-empty strings (the :class:`~mlsafety.core.TextDataset` constructor checks that);
    in-distribution labels (``ds.kind == "in"``) must be integers in [0, num_classes) when
    ``num_classes`` is given. OOD sets carry no labels (``-1``) and are not checked against the classes.

    Raises:
        InputError: naming the problem, the source and the fix.
    """
    if not isinstance(ds, TextDataset):
        raise InputError(f"expected a TextDataset, got {type(ds).__name__}; load texts with load_text_csv or similar")
    if len(ds) == 0:
        raise InputError(f"{ds.source} has no texts; give at least one")
    if ds.kind == "in" and num_classes is not None:
        check_labels(ds.y, num_classes, f"labels of {ds.source}")
