"""Resources the text attacks share: WordNet, word vectors from a model's input embeddings, and a sentence encoder.

They stand in for what TextAttack downloads at run time: WordNet comes from Debian's package (built
into an NLTK folder by :func:`mlsafety.zoo.load_wordnet`), counter-fitted word vectors are replaced
by the input (word-piece) embeddings of the victim or of MiniLM restricted to whole words, and the
Universal Sentence Encoder by the embedded MiniLM encoder (mean-pooled, cosine).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, frozen
from mlsafety.robustness.text._base import texts_per_pass
from mlsafety.zoo import load_model, load_wordnet

_WHOLE_WORD = re.compile(r"^[a-z][a-z'-]*[a-z]$|^[a-z]$")


# --- WordNet -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def wordnet() -> Any:
    """NLTK's WordNet reader on Debian's WordNet 3.0 (one line naming the packages when they are missing)."""
    return load_wordnet()


@lru_cache(maxsize=200_000)
def wordnet_pos(word: str) -> frozenset[str]:
    """The parts of speech WordNet lists for ``word`` (``n``, ``v``, ``a``, ``r``; satellites ``s`` count as ``a``)."""
    return frozenset("a" if s.pos() == "s" else s.pos() for s in wordnet().synsets(word.lower()))


@lru_cache(maxsize=200_000)
def wordnet_synonyms(word: str) -> tuple[str, ...]:
    """Single-word lemma names of every synset of ``word`` other than the word itself, in WordNet's order."""
    low = word.lower()
    out: list[str] = []
    for s in wordnet().synsets(low):
        for lemma in s.lemmas():
            name = lemma.name()
            if "_" in name or name.lower() == low or name in out:
                continue
            out.append(name)
    return tuple(out)


def match_case(word: str, like: str) -> str:
    """``word`` in the case pattern of ``like`` (upper, capitalised or as is)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# --- word vectors -------------------------------------------------------------------------------


class WordVectors:
    """Unit-length vectors of a tokenizer's whole-word vocabulary entries, taken from an embedding matrix.

    Whole words are vocabulary entries that are lower-case letters (word pieces such as ``##ing``,
    special tokens, digits and punctuation are left out); a BPE vocabulary's word-initial marker
    (``Ġ``) is stripped. Nearest neighbours are by cosine over these entries only.

    Args:
        vocab: token -> row of ``matrix``.
        matrix: the input-embedding matrix ``(V, D)``.
    """

    def __init__(self, vocab: dict[str, int], matrix: torch.Tensor) -> None:
        words: list[str] = []
        rows: list[int] = []
        seen: set[str] = set()
        for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            w = tok[1:] if tok.startswith(("\u0120", "\u2581")) else tok
            if _WHOLE_WORD.match(w) and w not in seen and i < matrix.shape[0]:
                seen.add(w)
                words.append(w)
                rows.append(i)
        if not words:
            raise InputError("the tokenizer's vocabulary has no whole-word entries to take word vectors from")
        self.words = words
        self.index = {w: k for k, w in enumerate(words)}
        m = matrix.detach().float().cpu()[torch.tensor(rows)]
        self.vectors = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._nn: dict[tuple[str, int], tuple[tuple[str, ...], tuple[float, ...]]] = {}

    @classmethod
    def from_classifier(cls, clf: Classifier) -> WordVectors:
        """The victim's own input embeddings and tokenizer vocabulary."""
        layer = clf.embedding_layer
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise InputError("the victim's input embedding layer has no (V, D) weight to take word vectors from")
        return cls(_vocab(clf.tokenizer), weight)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index

    def cosine(self, a: str, b: str) -> float | None:
        """Cosine of two words' vectors; None when either is not a whole word of the vocabulary."""
        i, j = self.index.get(a.lower()), self.index.get(b.lower())
        if i is None or j is None:
            return None
        return float(self.vectors[i] @ self.vectors[j])

    def neighbours(self, word: str, k: int, min_cos: float = -1.0) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """The ``k`` nearest whole words to ``word`` by cosine (itself excluded) with cosine >= ``min_cos``."""
        key = (word.lower(), k)
        if key not in self._nn:
            i = self.index.get(word.lower())
            if i is None:
                self._nn[key] = ((), ())
            else:
                sims = self.vectors @ self.vectors[i]
                sims[i] = -2.0
                top = sims.topk(min(k, len(self.words) - 1))
                self._nn[key] = (
                    tuple(self.words[j] for j in top.indices.tolist()),
                    tuple(float(v) for v in top.values.tolist()),
                )
        words, sims = self._nn[key]
        keep = [n for n, (w, s) in enumerate(zip(words, sims)) if s >= min_cos]
        return tuple(words[n] for n in keep), tuple(sims[n] for n in keep)


def _vocab(tokenizer: Any) -> dict[str, int]:
    get = getattr(tokenizer, "get_vocab", None)
    vocab = get() if callable(get) else getattr(tokenizer, "vocab", None)
    if not isinstance(vocab, dict) or not vocab:
        raise InputError("the tokenizer exposes no vocabulary (get_vocab()); word vectors need one")
    return vocab


@lru_cache(maxsize=1)
def minilm_word_vectors() -> WordVectors:
    """Whole-word vectors from the embedded MiniLM's input embeddings."""
    enc: Any = load_model("minilm")
    return WordVectors(_vocab(enc.tokenizer), enc.get_input_embeddings().weight)


# --- sentence encoder ----------------------------------------------------------------------------


class SentenceEncoder:
    """Sentence embeddings of the embedded MiniLM (mean-pooled), batched and cached; stands in for USE.

    Args:
        module: a sentence encoder ``(input_ids, attention_mask) -> (N, D)`` with ``.tokenizer``;
            None loads the zoo's ``minilm``.
        batch_size: texts per forward pass (None: 32 on the CPU, 256 on a GPU; see
            :data:`~mlsafety.robustness.text._base.CPU_TEXTS_PER_PASS`).
    """

    def __init__(self, module: nn.Module | None = None, batch_size: int | None = None) -> None:
        self.module: Any = module if module is not None else load_model("minilm")
        self.clf = Classifier(_Pooled(self.module), tokenizer=self.module.tokenizer)
        self.batch_size = texts_per_pass(self.module, batch_size, gpu=256)
        self._cache: dict[str, torch.Tensor] = {}
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings ``(N, D)``."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            with frozen(self.module), torch.inference_mode():
                for lo in range(0, len(todo), self.batch_size):
                    chunk = todo[lo : lo + self.batch_size]
                    self.calls += 1
                    e = self.clf.logits(chunk).float().cpu()
                    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    for t, v in zip(chunk, e):
                        self._cache[t] = v
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros((0, 1))

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each pair ``(a[i], b[i])``, all texts encoded in one batch."""
        e = self.embed([*a, *b])
        return (e[: len(a)] * e[len(a) :]).sum(dim=1).clamp(-1.0, 1.0)

    __call__ = cosine


class _Pooled(nn.Module):
    """Presents a sentence encoder's (N, D) output as "logits" so the core adapter can batch texts through it."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out


def angular(cos: torch.Tensor) -> torch.Tensor:
    """Angular similarity ``1 - arccos(cos) / pi`` (TextAttack's ``metric="angular"`` for sentence encoders)."""
    return 1.0 - torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


@lru_cache(maxsize=1)
def minilm_encoder() -> SentenceEncoder:
    """One shared MiniLM sentence encoder per process."""
    return SentenceEncoder()


def minilm_similarity(a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    """Cosine of the shared MiniLM encoder's embeddings of each pair (the encoder loads on first call)."""
    return minilm_encoder().cosine(a, b)
