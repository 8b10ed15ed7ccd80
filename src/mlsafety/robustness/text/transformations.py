"""Transformations: what a word may be replaced by.

- :class:`WordNetSwap`: WordNet synonyms (single-word lemmas of every synset of the word), as
  TextAttack's ``WordSwapWordNet`` and PWWS (Ren et al. 2019).
- :class:`EmbeddingSwap`: the nearest whole words by cosine in an input-embedding space (the
  victim's or MiniLM's word-piece embeddings), as TextFooler's swap over counter-fitted vectors
  (Jin et al. 2020; counter-fitted vectors are not available offline: see :mod:`._resources`).
- :class:`CharEdits`: character edits of DeepWordBug (Gao et al. 2018): swap two neighbouring
  characters, delete one, insert one, substitute one by a neighbouring key on a QWERTY keyboard.
- :class:`Composite`: the union of several transformations' replacements.

Replacements keep the original word's case pattern.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import ClassVar

import torch

from mlsafety.core import Classifier, InputError
from mlsafety.robustness.text._base import AttackedText, Transformation
from mlsafety.robustness.text._resources import WordVectors, match_case, minilm_word_vectors, wordnet_synonyms


class WordNetSwap(Transformation):
    """WordNet synonyms of the word (single-word lemma names of all its synsets, WordNet's order).

    Args:
        max_candidates: keep at most this many (None: all).
    """

    name: ClassVar[str] = "wordnet-swap"

    def __init__(self, max_candidates: int | None = None) -> None:
        self.max_candidates = max_candidates

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        word = text.words[index]
        if not word.isalpha():
            return []
        out = [match_case(s, word) for s in wordnet_synonyms(word) if s.replace("-", "").isalpha()]
        return out if self.max_candidates is None else out[: self.max_candidates]


class EmbeddingSwap(Transformation):
    """The ``max_candidates`` nearest whole words by cosine of their input embeddings (cosine >= ``min_cos``).

    Args:
        vectors: the word vectors (:meth:`WordVectors.from_classifier` for the victim's embeddings,
            :func:`~mlsafety.robustness.text._resources.minilm_word_vectors` for MiniLM's).
        max_candidates: neighbours per word (TextFooler: 50).
        min_cos: cosine at least (TextAttack's recipe filters with a separate constraint; -1: no filter).
    """

    name: ClassVar[str] = "embedding-swap"

    def __init__(self, vectors: WordVectors, max_candidates: int = 50, min_cos: float = -1.0) -> None:
        self.vectors = vectors
        self.max_candidates = max_candidates
        self.min_cos = min_cos

    @classmethod
    def of(cls, source: str, clf: Classifier, max_candidates: int = 50, min_cos: float = -1.0) -> EmbeddingSwap:
        """``source`` ``"victim"`` (the model's own input embeddings) or ``"minilm"``."""
        return cls(word_vectors(source, clf), max_candidates, min_cos)

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        word = text.words[index]
        words, _ = self.vectors.neighbours(word, self.max_candidates, self.min_cos)
        return [match_case(w, word) for w in words]


def word_vectors(source: str, clf: Classifier) -> WordVectors:
    """Word vectors from ``"victim"`` (its input embeddings) or ``"minilm"``."""
    if source == "victim":
        return WordVectors.from_classifier(clf)
    if source == "minilm":
        return minilm_word_vectors()
    raise InputError(f"word embeddings must come from 'victim' or 'minilm', got {source!r}")


_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys adjacent to each letter on a QWERTY keyboard (same row left/right, rows above/below offset by 0/-1/+1)."""
    pos = {c: (r, i) for r, row in enumerate(_QWERTY_ROWS) for i, c in enumerate(row)}
    out: dict[str, str] = {}
    for c, (r, i) in pos.items():
        near = []
        for dr in (-1, 0, 1):
            rr = r + dr
            if not 0 <= rr < len(_QWERTY_ROWS):
                continue
            for di in (-1, 0, 1):
                if dr == 0 and di == 0:
                    continue
                ii = i + di
                if 0 <= ii < len(_QWERTY_ROWS[rr]):
                    near.append(_QWERTY_ROWS[rr][ii])
        out[c] = "".join(near)
    return out


KEY_NEIGHBOURS = _keyboard_neighbours()
EDITS = ("swap", "delete", "insert", "key")


class CharEdits(Transformation):
    """DeepWordBug's character edits of one word.

    Args:
        kinds: which edits: ``swap`` (two neighbouring characters), ``delete`` (one character),
            ``insert`` (a random lower-case letter), ``key`` (a letter by a neighbouring QWERTY key).
        random_one: one edit of each kind at a random position (TextAttack's default, 4 candidates per
            word), drawn from the example's generator; False: every position (and for ``insert`` /
            ``key`` every letter or neighbouring key).
        min_length: words shorter than this are left alone (1-letter words have no swap).
    """

    name: ClassVar[str] = "char-edits"

    def __init__(self, kinds: Sequence[str] = EDITS, random_one: bool = True, min_length: int = 2) -> None:
        bad = [k for k in kinds if k not in EDITS]
        if bad or not kinds:
            raise InputError(f"character edits must be some of {', '.join(EDITS)}, got {list(kinds)}")
        self.kinds = tuple(kinds)
        self.random_one = random_one
        self.min_length = min_length

    @staticmethod
    def _pick(n: int, g: torch.Generator | None) -> int:
        return int(torch.randint(n, (1,), generator=g)) if n > 1 else 0

    def _edits(self, word: str, kind: str, g: torch.Generator | None) -> list[str]:
        n = len(word)
        letters = string.ascii_lowercase
        if kind == "swap":
            spots = [i for i in range(n - 1) if word[i] != word[i + 1]]
            chosen = [spots[self._pick(len(spots), g)]] if self.random_one and spots else spots
            return [word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in chosen]
        if kind == "delete":
            chosen = [self._pick(n, g)] if self.random_one else list(range(n))
            return [word[:i] + word[i + 1 :] for i in chosen]
        if kind == "insert":
            if self.random_one:
                i, c = self._pick(n + 1, g), letters[self._pick(26, g)]
                return [word[:i] + c + word[i:]]
            return [word[:i] + c + word[i:] for i in range(n + 1) for c in letters]
        spots = [i for i in range(n) if word[i].lower() in KEY_NEIGHBOURS]
        if not spots:
            return []
        if self.random_one:
            i = spots[self._pick(len(spots), g)]
            near = KEY_NEIGHBOURS[word[i].lower()]
            pairs = [(i, near[self._pick(len(near), g)])]
        else:
            pairs = [(i, c) for i in spots for c in KEY_NEIGHBOURS[word[i].lower()]]
        return [word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1 :] for i, c in pairs]

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        word = text.words[index]
        if len(word) < self.min_length or not word.isalpha():
            return []
        out: list[str] = []
        for kind in self.kinds:
            out.extend(self._edits(word, kind, g))
        return out


class Composite(Transformation):
    """The replacements of several transformations, in order, without duplicates."""

    name: ClassVar[str] = "composite"

    def __init__(self, parts: Sequence[Transformation]) -> None:
        if not parts:
            raise InputError("a composite transformation needs at least one part")
        self.parts = list(parts)

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        out: list[str] = []
        for p in self.parts:
            out.extend(w for w in p.replacements(text, index, g) if w not in out)
        return out
