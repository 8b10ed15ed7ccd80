"""Text inputs: an immutable batch of strings, token batches, the one tokenising function, text datasets.

Text flows through the library as :class:`Texts` (strings, shape ``(N,)``), which code written for
image tensors can slice, index, move and measure like a batch; a model's tokenizer turns a batch of
them into a :class:`TextBatch` of token ids through :func:`encode`, the only place that tokenises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from mlsafety.core._errors import InputError

Modality = Literal["image", "text"]

# transformers marks "no known limit" with a huge model_max_length (int(1e30)).
_NO_LIMIT = 1_000_000_000


class Texts(Sequence[str]):
    """An immutable batch of strings ``(N,)`` that behaves like a tensor batch where the library needs it.

    ``len(t)``, ``t.shape == (N,)``; ``t[i]`` is one string, while a slice, a list of indices, a
    ``LongTensor`` of indices or a ``BoolTensor`` mask gives a new :class:`Texts`; ``t.to(device)``
    returns ``t`` (strings live on no device); iteration yields the strings.

    Args:
        texts: any sequence or iterable of ``str`` (a single ``str`` is refused: wrap it in a list).

    Example:
        >>> t = Texts(["a good film", "a bad film", "fine"])
        >>> t[torch.tensor([True, False, True])]
        Texts(['a good film', 'fine'])
    """

    __slots__ = ("_items",)

    def __init__(self, texts: Iterable[str]) -> None:
        if isinstance(texts, Texts):
            self._items: tuple[str, ...] = texts._items
            return
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a sequence of strings, got one string; wrap it in a list: [text]")
        items = tuple(texts)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InputError(
                    f"texts must all be str, but item {i} is {type(item).__name__}; decode or convert it with str()"
                )
        self._items = items

    @classmethod
    def cat(cls, parts: Iterable[Sequence[str]]) -> Texts:
        """The concatenation of several batches, like ``torch.cat``."""
        items: list[str] = []
        for part in parts:
            items.extend(Texts(part))
        return cls(items)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._items),))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, *_args: Any, **_kwargs: Any) -> Texts:
        """Return self: strings are moved to a device only as token ids (see :func:`encode`)."""
        return self

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice | torch.Tensor | np.ndarray | Sequence[int] | Sequence[bool]) -> Texts: ...

    def __getitem__(self, index: Any) -> str | Texts:
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, slice):
            return Texts(self._items[index])
        if isinstance(index, torch.Tensor):
            if index.ndim == 0 and not index.is_floating_point() and index.dtype != torch.bool:
                return self._items[int(index)]
            if index.dtype == torch.bool:
                if index.shape != self.shape:
                    raise InputError(
                        f"a mask over {len(self)} texts must have shape ({len(self)},), got {tuple(index.shape)}"
                    )
                return Texts([t for t, keep in zip(self._items, index.tolist()) if keep])
            if index.is_floating_point() or index.is_complex() or index.ndim != 1:
                raise InputError(
                    f"index texts with a 1-D integer or bool tensor, got {index.dtype} {tuple(index.shape)}"
                )
            return Texts([self._items[i] for i in index.tolist()])
        if isinstance(index, (list, tuple)):
            if index and all(isinstance(i, (bool, np.bool_)) for i in index):
                return self[torch.tensor(index, dtype=torch.bool)]
            return Texts([self._items[int(i)] for i in index])
        return self._items[int(index)]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Texts):
            return self._items == other._items
        if isinstance(other, (list, tuple)):
            return self._items == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def __add__(self, other: Sequence[str]) -> Texts:
        return Texts.cat([self, other])

    def __repr__(self) -> str:
        if len(self) <= 3:
            return f"Texts({list(self._items)!r})"
        return f"Texts({list(self._items[:3])!r} + {len(self) - 3} more)"

    def tolist(self) -> list[str]:
        return list(self._items)


@dataclass(frozen=True)
class TextBatch:
    """Token ids of a batch of texts, padded to the longest: what a text model's forward takes.

    Attributes:
        input_ids: ``LongTensor (N, L)``; padded positions hold the pad id.
        attention_mask: ``LongTensor (N, L)``, 1 on real tokens, 0 on padding.
        truncated: ``BoolTensor (N,)``, True for texts cut at the maximum length.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.attention_mask.shape != self.input_ids.shape:
            raise InputError(
                f"a TextBatch needs input_ids and attention_mask of one shape (N, L), got "
                f"{tuple(self.input_ids.shape)} and {tuple(self.attention_mask.shape)}"
            )
        if self.truncated.shape != self.input_ids.shape[:1]:
            raise InputError(f"TextBatch.truncated must have shape (N,), got {tuple(self.truncated.shape)}")

    @property
    def shape(self) -> torch.Size:
        """``(N, L)``: batch size and padded length."""
        return self.input_ids.shape

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per text ``(N,)``."""
        return self.attention_mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> TextBatch:
        """The texts at ``index`` (a slice, indices or a mask); padding columns no text needs are dropped."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            n = len(self)
            if not -n <= int(index) < n:
                raise IndexError(f"index {int(index)} is out of range for a TextBatch of {n} texts")
            start = int(index) % n
            index = slice(start, start + 1)
        ids, mask = self.input_ids[index], self.attention_mask[index]
        keep = mask.any(dim=0)
        if ids.shape[0] and not bool(keep.all()):
            cols = keep.nonzero().reshape(-1)
            lo, hi = int(cols.min()), int(cols.max()) + 1
            ids, mask = ids[:, lo:hi], mask[:, lo:hi]
        return TextBatch(ids, mask, self.truncated[index])

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device), self.truncated.to(device))


def model_max_length(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length`` when it states a real limit, else None."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


_OFFSET_POSITIONS = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "longformer",
        "data2vec-text",
        "xmod",
        "roberta-prelayernorm",
        "ibert",
        "mpnet",
    }
)


def position_limit(module: Any) -> int | None:
    """Tokens per text the model's position embeddings allow (``config.max_position_embeddings`` or
    ``n_positions``), less the ``padding_idx + 1`` offset of RoBERTa-style models; None when not stated."""
    config = getattr(module, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or isinstance(positions, bool):
        positions = getattr(config, "n_positions", None)
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= 2
    return positions if 0 < positions < _NO_LIMIT else None


def text_limit(tokenizer: Any, module: Any) -> int | None:
    """The smaller of the tokenizer's stated limit and the model's position limit; None when neither states one."""
    limits = [x for x in (model_max_length(tokenizer), position_limit(module)) if x is not None]
    return min(limits) if limits else None


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the pad token's, else the end-of-sequence token's."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    raise InputError("the tokenizer has neither a pad nor an end-of-sequence token; set tokenizer.pad_token first")


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int | None = None,
    padding_side: Literal["left", "right"] | None = None,
    add_special_tokens: bool = True,
) -> TextBatch:
    """Tokenise ``texts`` into one :class:`TextBatch` padded to its longest text: the library's one tokeniser call.

    Texts longer than the maximum length are cut to it (the tokenizer keeps its special tokens) and
    flagged in ``truncated``. Tokenizers without a pad token pad with their end-of-sequence token;
    the attention mask marks padding either way. The tokenizer is not changed.

    Args:
        tokenizer: a ``transformers`` tokenizer (anything callable like one that returns ``input_ids``).
        texts: the strings (a :class:`Texts` or any sequence of ``str``); none may be empty.
        max_length: tokens per text at most, special tokens included; None: the tokenizer's
            ``model_max_length`` when it states one, else no limit.
        padding_side: where padding goes; None: the tokenizer's ``padding_side`` (right when unset).
        add_special_tokens: add the tokenizer's special tokens (``[CLS] ... [SEP]``, BOS, ...).

    Raises:
        InputError: an empty text, a text that gives no tokens, a bad ``max_length`` or ``padding_side``.

    Example:
        >>> batch = encode(tokenizer, ["a good film", "bad"], max_length=128)
        >>> batch.input_ids.shape, batch.truncated
    """
    texts = Texts(texts)
    if len(texts) == 0:
        raise InputError("no texts to encode; give at least one string")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InputError(
                f"text {i} is empty or only whitespace; remove empty texts or replace them with real content"
            )
    limit = max_length if max_length is not None else model_max_length(tokenizer)
    if limit is not None and int(limit) < 1:
        raise InputError(f"max_length must be a positive number of tokens, got {max_length}")
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")
    items = list(texts)
    # verbose=False: the length warning is ours to give (``truncated``), not the tokenizer's log line.
    ids: list[list[int]] = [
        list(row)
        for row in tokenizer(items, add_special_tokens=add_special_tokens, truncation=False, verbose=False)["input_ids"]
    ]
    cut = [limit is not None and len(row) > limit for row in ids]
    if any(cut):
        long = [i for i, c in enumerate(cut) if c]
        short_ids = tokenizer(
            [items[i] for i in long],
            add_special_tokens=add_special_tokens,
            truncation=True,
            max_length=limit,
            verbose=False,
        )["input_ids"]
        for i, row in zip(long, short_ids):
            ids[i] = list(row)
    for i, row in enumerate(ids):
        if not row:
            raise InputError(f"text {i} gives no tokens ({items[i]!r}); remove it or give the tokenizer special tokens")
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return TextBatch(input_ids, mask, torch.tensor(cut, dtype=torch.bool))


class TextDataset(Dataset[tuple[str, torch.Tensor]]):
    """Texts and integer labels ``y`` (N,) held in memory; OOD sets carry ``y = -1``.

    The text counterpart of :class:`~mlsafety.core.ArrayDataset`, with the same attributes and
    methods: ``.x`` (also ``.texts``) is a :class:`Texts`, ``batches`` yields ``(Texts, y)``.

    Args:
        texts: the strings; none may be empty.
        y: labels (N,) (a tensor or a sequence of integers; whole-valued floats are accepted), or None
            for unlabelled data (``-1`` each).
        name: a short name used in hazards and reports.
        kind: ``"in"`` for in-distribution data, ``"near"`` or ``"far"`` for OOD sets.
        description: one line for listings and reports.
        source: where the data came from, for error messages; default: the name.
    """

    modality: Modality = "text"

    def __init__(
        self,
        texts: Sequence[str],
        y: torch.Tensor | Sequence[int] | None,
        name: str = "data",
        kind: str = "in",
        description: str = "",
        source: str = "",
    ) -> None:
        from mlsafety.core._data import check_label_form

        self.source = source or f"dataset {name!r}"
        self.x = Texts(texts)
        for i, text in enumerate(self.x):
            if not text.strip():
                raise InputError(
                    f"text {i} of {self.source} is empty or only whitespace; remove empty texts or give them content"
                )
        if y is None:
            y = torch.full((len(self.x),), -1, dtype=torch.long)
        elif not isinstance(y, torch.Tensor):
            values = list(y)
            for i, value in enumerate(values):
                if isinstance(value, (int, np.integer)) and not -(2**63) <= int(value) < 2**63:
                    raise InputError(
                        f"label {i} of {self.source} is {int(value)}, too large for a class index; "
                        "number the classes 0..K-1"
                    )
            try:
                y = torch.as_tensor(values)
            except (OverflowError, RuntimeError, TypeError, ValueError) as exc:
                raise InputError(
                    f"labels of {self.source} are not numbers a tensor can hold ({type(exc).__name__}); "
                    "give integer labels"
                ) from None
        y = check_label_form(y, f"labels of {self.source}")
        if len(self.x) != y.shape[0]:
            raise InputError(f"{self.source} has {len(self.x)} texts but {y.shape[0]} labels; give one label per text")
        self.y = y
        self.name = name
        self.kind = kind
        self.description = description

    @property
    def texts(self) -> Texts:
        return self.x

    @property
    def is_ood(self) -> bool:
        return self.kind != "in"

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        return self.x[index], self.y[index]

    def subset(
        self, index: torch.Tensor | slice | Sequence[int], name: str | None = None, source: str | None = None
    ) -> TextDataset:
        return TextDataset(
            self.x[index], self.y[index], name or self.name, self.kind, self.description, source or self.source
        )

    def batches(self, batch_size: int) -> Iterator[tuple[Texts, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def __repr__(self) -> str:
        return f"TextDataset({self.name!r}, n={len(self)}, kind={self.kind!r})"


def modality_of(obj: Any) -> Modality:
    """``"text"`` or ``"image"``: what kind of input a dataset, batch or model holds or takes.

    Text: :class:`Texts`, :class:`TextBatch`, :class:`TextDataset`, a list of strings, anything with a
    ``modality`` attribute of ``"text"`` (a :class:`~mlsafety.core.Classifier` with a tokenizer, a
    language model), an ``nn.Module`` carrying a ``tokenizer`` or whose ``main_input_name`` is
    ``"input_ids"`` (``transformers`` text models), a ``DataLoader`` over a text dataset. Everything
    else (tensors, ``ArrayDataset``, image models, loaders of image batches) is ``"image"``, the first
    wave's default.
    """
    if isinstance(obj, (Texts, TextBatch, TextDataset)):
        return "text"
    declared = getattr(obj, "modality", None)
    if declared in ("text", "image"):
        return "text" if declared == "text" else "image"
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, str) for t in obj):
        return "text"
    if isinstance(obj, torch.nn.Module):
        if getattr(obj, "tokenizer", None) is not None or getattr(obj, "main_input_name", None) == "input_ids":
            return "text"
    if isinstance(obj, torch.utils.data.DataLoader):
        return modality_of(obj.dataset)
    return "image"
