"""Token attributions merged into words, for people to read.

Tokenizers cut words into pieces: WordPiece marks a continuation with ``##`` (BERT), byte-level BPE
marks a word's start with ``Ġ`` (GPT-2, RoBERTa), SentencePiece with ``▁`` (Llama, T5). A word's score
is the sum of its pieces' scores (so an additive method's completeness carries over to words).
A fast tokenizer's ``word_ids()`` and character offsets give the grouping and each word's exact
span in the original text; otherwise the markers above do. Special tokens and padding are never words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlsafety.core import InputError, TextBatch

WORD_START = ("Ġ", "▁")
"""Marks of a word's first piece (byte-level BPE, SentencePiece)."""
CONTINUATION = "##"
"""Mark of a word's later piece (WordPiece)."""


@dataclass(frozen=True)
class Word:
    """One word of a text with its attribution.

    Attributes:
        text: the word as it reads (the original characters when offsets are known).
        score: the sum of its tokens' scores.
        start: its first character in the original text (None when the tokenizer gives no offsets).
        end: one past its last character (None likewise).
        tokens: how many tokens it was cut into.
    """

    text: str
    score: float
    start: int | None = None
    end: int | None = None
    tokens: int = 1


def special_mask(tokenizer: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Bool (N, L): True where the id is one of the tokenizer's special tokens (``[CLS]``, ``[SEP]``,
    padding, ...); the unknown token counts as a word, not a special token."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.discard(getattr(tokenizer, "unk_token_id", None))
    if not special:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    return torch.isin(input_ids, torch.tensor(sorted(special), dtype=input_ids.dtype, device=input_ids.device))


def group_pieces(pieces: Sequence[str]) -> list[list[int]]:
    """Positions of each word's pieces: ``##`` continues a word; ``Ġ`` / ``▁`` start one (and a
    piece without it continues one, except the first); with no mark at all every piece is a word."""
    starts_marked = any(p.startswith(WORD_START) for p in pieces)
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        continues = piece.startswith(CONTINUATION) or (starts_marked and not piece.startswith(WORD_START))
        if continues and groups:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _strip(piece: str) -> str:
    if piece.startswith(CONTINUATION):
        return piece[len(CONTINUATION) :]
    return piece.lstrip("".join(WORD_START))


def merge_pieces(pieces: Sequence[str], scores: Sequence[float]) -> list[Word]:
    """Words from word pieces by their marks (:func:`group_pieces`), each scoring the sum of its pieces."""
    if len(pieces) != len(scores):
        raise InputError(f"{len(pieces)} tokens but {len(scores)} scores")
    return [
        Word("".join(_strip(pieces[i]) for i in g), float(sum(scores[i] for i in g)), tokens=len(g))
        for g in group_pieces(pieces)
    ]


def _real(batch: TextBatch, tokenizer: Any, i: int) -> torch.Tensor:
    """Positions of text ``i``'s real, non-special tokens, in order."""
    keep = batch.attention_mask[i].bool() & ~special_mask(tokenizer, batch.input_ids[i : i + 1])[0]
    return keep.nonzero()[:, 0].cpu()


def _by_word_ids(tokenizer: Any, text: str, batch: TextBatch, i: int, scores: torch.Tensor) -> list[Word] | None:
    """Words from the fast tokenizer's ``word_ids()`` and offsets, or None when it cannot give them
    or its tokens differ from the batch's (then the marks decide)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    real = batch.attention_mask[i].bool().cpu()
    ids = batch.input_ids[i].cpu()[real].tolist()
    enc = tokenizer(
        text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True, max_length=len(ids)
    )  # cut where the batch was cut
    if enc["input_ids"] != ids:
        return None
    kept = scores[i].cpu()[real]
    word_ids = enc.word_ids()
    groups: dict[int, list[int]] = {}
    for pos in range(len(ids)):
        if enc["special_tokens_mask"][pos] or word_ids[pos] is None:
            continue
        groups.setdefault(word_ids[pos], []).append(pos)
    words = []
    for positions in groups.values():
        start = enc["offset_mapping"][positions[0]][0]
        end = enc["offset_mapping"][positions[-1]][1]
        score = float(kept[positions].sum())
        words.append(Word(text[start:end].strip() or text[start:end], score, start, end, len(positions)))
    return words


def words(tokenizer: Any, texts: Sequence[str], batch: TextBatch, scores: torch.Tensor) -> list[list[Word]]:
    """Each text's words with their attributions.

    Args:
        tokenizer: the tokenizer that built ``batch``.
        texts: the original texts (N).
        batch: their encoding (what the classifier's ``encode`` returned).
        scores: token scores (N, L) aligned with ``batch`` (what an attribution method returned).

    Returns:
        Per text, its words in order; a text cut at the maximum length keeps the words that remain.
    """
    if scores.shape != batch.input_ids.shape or len(texts) != scores.shape[0]:
        raise InputError(
            f"scores {tuple(scores.shape)} must match the batch {tuple(batch.input_ids.shape)} of {len(texts)} texts"
        )
    out = []
    for i, text in enumerate(texts):
        merged = _by_word_ids(tokenizer, text, batch, i, scores)
        if merged is None:
            pos = _real(batch, tokenizer, i)
            pieces = tokenizer.convert_ids_to_tokens(batch.input_ids[i].cpu()[pos].tolist())
            merged = merge_pieces(pieces, scores[i].cpu()[pos].tolist())
            if hasattr(tokenizer, "convert_tokens_to_string"):  # byte-level pieces read as characters again
                texts_of = [
                    tokenizer.convert_tokens_to_string([pieces[j] for j in g]).strip() for g in group_pieces(pieces)
                ]
                merged = [Word(t or w.text, w.score, tokens=w.tokens) for t, w in zip(texts_of, merged, strict=True)]
        out.append(merged)
    return out
