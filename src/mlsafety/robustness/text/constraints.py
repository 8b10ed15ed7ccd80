"""Constraints: which words may change and which perturbed texts are acceptable (TextAttack's split).

Word choice (:meth:`~mlsafety.robustness.text.Constraint.modifiable`): :class:`StopWords`,
:class:`RepeatModification`. Candidates (:meth:`~mlsafety.robustness.text.Constraint.allows`, one
batch per step): :class:`MaxWordsPerturbed`, :class:`SentenceSimilarity`,
:class:`WordEmbeddingDistance`, :class:`PartOfSpeech`, :class:`NoAntonym`, :class:`EditDistance`.

Every constraint's :meth:`check` on a finished text is what the search enforced on it, so "no
returned text violates a constraint" is a property the tests can check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import ClassVar, Literal, Protocol

import torch

from mlsafety.core import InputError
from mlsafety.robustness.text._base import AttackedText, Constraint
from mlsafety.robustness.text._resources import WordVectors, angular, wordnet, wordnet_pos


def default_stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (318, Glasgow IR group's list) plus the clitics ``n't``, ``'s``, ``'re``,
    ``'ve``, ``'ll``, ``'d``, ``'m`` (TextFooler and TextAttack ship their own, similar lists)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "s", "t"}


class StopWords(Constraint):
    """Stop words (compared lower-case) are never changed.

    Args:
        words: the stop words; None: :func:`default_stop_words`.
    """

    name: ClassVar[str] = "stop-words"

    def __init__(self, words: Iterable[str] | None = None) -> None:
        self.words = frozenset(w.lower() for w in (default_stop_words() if words is None else words))

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return {i for i in indices if text.original_words[i].lower() not in self.words}

    def check(self, original: AttackedText, final: AttackedText) -> bool:
        return all(original.words[i].lower() not in self.words for i in final.changed)


class RepeatModification(Constraint):
    """A word is changed at most once (its index leaves the modifiable set once touched)."""

    name: ClassVar[str] = "repeat-modification"

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return indices - text.modified

    def check(self, original: AttackedText, final: AttackedText) -> bool:
        return True  # a finished text cannot show how often an index changed; the search never repeats one


def max_words_for_share(share: float, num_words: int, round_up: bool = True) -> int:
    """Words a ``share`` of a text's ``num_words`` allows to change: ``ceil(share x num_words)``, TextAttack's
    rounding (``MaxWordsPerturbed``: ``math.ceil(min_num_words * max_percent)``; ``MaxModificationRate``
    likewise), so a short text can change a word at all (25% of 3 words: 1, where ``floor`` gives 0).
    ``round_up=False``: ``floor``, at most the share itself. The product is first rounded to 9 decimals, so float
    noise does not add a word (0.14 x 50 is 7.000000000000001 in floats: 7 words, where TextAttack counts 8)."""
    product = round(share * num_words, 9)
    return math.ceil(product) if round_up else math.floor(product)


class MaxWordsPerturbed(Constraint):
    """At most ``ceil(max_share x words)`` of the original's words, or ``min_words`` when more (and at most
    ``max_words``), differ from it (:func:`max_words_for_share`).

    Args:
        max_share: share of words in (0, 1] (None: no share limit).
        max_words: number of words (None: no count limit).
        min_words: the share limit allows at least this many words (TextAttack's ``MaxModificationRate``
            ``min_threshold``, 4 in its A2T recipe, so a short text can change some words at all).
        round_up: the share limit is ``ceil(max_share x words)``, TextAttack's rounding (its
            ``MaxModificationRate`` and ``MaxWordsPerturbed``); False: ``floor``, at most the share itself
            (a text of fewer than ``1 / max_share`` words can then change none).
    """

    name: ClassVar[str] = "max-words-perturbed"

    def __init__(
        self, max_share: float | None = None, max_words: int | None = None, min_words: int = 0, round_up: bool = True
    ) -> None:
        if max_share is None and max_words is None:
            raise InputError("MaxWordsPerturbed needs max_share or max_words")
        if max_share is not None and not 0 < max_share <= 1:
            raise InputError(f"max_share must be in (0, 1], got {max_share}")
        if min_words < 0:
            raise InputError(f"min_words must be >= 0, got {min_words}")
        self.max_share = max_share
        self.max_words = max_words
        self.min_words = min_words
        self.round_up = round_up

    def _ok(self, text: AttackedText) -> bool:
        k = len(text.changed)
        if self.max_share is not None:
            if k > max(max_words_for_share(self.max_share, text.num_words, self.round_up), self.min_words):
                return False
        return not (self.max_words is not None and k > self.max_words)

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [self._ok(c) for c in candidates]


class WordEmbeddingDistance(Constraint):
    """Every changed word's vector has cosine >= ``min_cos`` with the original word's (TextFooler: 0.5).

    A word outside the vectors' whole-word vocabulary fails (TextAttack's constraint accepts it by default,
    ``include_unknown_words=True``; :class:`~.transformations.EmbeddingSwap` proposes only words inside it).
    """

    name: ClassVar[str] = "word-embedding-distance"

    def __init__(self, vectors: WordVectors, min_cos: float = 0.5) -> None:
        self.vectors = vectors
        self.min_cos = min_cos

    def _ok(self, original: AttackedText, text: AttackedText) -> bool:
        for i in text.changed:
            cos = self.vectors.cosine(original.words[i], text.words[i])
            if cos is None or cos < self.min_cos:
                return False
        return True

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [self._ok(original, c) for c in candidates]


class PartOfSpeech(Constraint):
    """Every changed word keeps a part of speech of the original word, by WordNet's synsets.

    Deviation: TextFooler tags each word in context (NLTK's perceptron tagger, whose model is a
    download); here a word's parts of speech are those of its WordNet synsets (nouns, verbs,
    adjectives, adverbs), so the check asks that the two words share one. A word WordNet does not
    know (a name, a function word) may only become another such word.

    Args:
        allow_noun_verb: treat nouns and verbs as one class (TextAttack's ``allow_verb_noun_swap``,
            on in its TextFooler recipe).
    """

    name: ClassVar[str] = "part-of-speech"

    def __init__(self, allow_noun_verb: bool = True) -> None:
        self.allow_noun_verb = allow_noun_verb

    def _tags(self, word: str) -> frozenset[str]:
        tags = wordnet_pos(word)
        if self.allow_noun_verb and tags & {"n", "v"}:
            tags = tags | {"n", "v"}
        return tags

    def _ok(self, original: AttackedText, text: AttackedText) -> bool:
        for i in text.changed:
            a, b = self._tags(original.words[i]), self._tags(text.words[i])
            if (a or b) and not a & b:
                return False
        return True

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [self._ok(original, c) for c in candidates]


@lru_cache(maxsize=200_000)
def _senses(word: str) -> frozenset[object]:
    """Every WordNet synset of ``word`` (lower-case) under any part of speech; NLTK's ``synsets`` lemmatises
    first (morphy, with WordNet's exception lists), so ``fails`` gives ``fail``'s senses and ``worse`` ``bad``'s."""
    return frozenset(wordnet().synsets(word))


def _heads(senses: frozenset[object]) -> frozenset[object]:
    """The adjective-cluster heads of the adjective ``senses``: a head synset (``a``) is its own, a satellite
    (``s``) has those it is ``similar_to``."""
    out: set[object] = set()
    for s in senses:
        pos = s.pos()  # type: ignore[attr-defined]
        if pos == "a":
            out.add(s)
        elif pos == "s":
            out.update(h for h in s.similar_tos() if h.pos() == "a")  # type: ignore[attr-defined]
    return frozenset(out)


def _antonym_senses(senses: Iterable[object]) -> frozenset[object]:
    """Synsets of the antonyms WordNet lists for any lemma of ``senses``."""
    return frozenset(a.synset() for s in senses for lemma in s.lemmas() for a in lemma.antonyms())  # type: ignore[attr-defined]


@lru_cache(maxsize=200_000)
def _opposites(word: str) -> tuple[frozenset[object], frozenset[object], frozenset[object], frozenset[object]]:
    """``word``'s senses, its adjective-cluster heads, what opposes them (the synsets of the antonyms of its
    senses, direct, and of its cluster heads, indirect), and the antonyms of the heads its own head senses
    ``also_see`` (WordNet's see-also links between cluster heads: ``happy`` -> ``glad``, antonym ``sad``)."""
    senses = _senses(word)
    heads = _heads(senses)
    see = {x for s in senses if s.pos() == "a" for x in s.also_sees() if x.pos() == "a"}  # type: ignore[attr-defined]
    return senses, heads, _antonym_senses(senses) | _antonym_senses(heads), _antonym_senses(see)


@lru_cache(maxsize=500_000)
def _opposed(a: str, b: str) -> bool:
    sa, ha, oa, na = _opposites(a)
    sb, hb, ob, nb = _opposites(b)
    return bool(oa & (sb | hb) or ob & (sa | ha) or na & sb or nb & sa)


def antonymous(old: str, new: str) -> bool:
    """Whether WordNet 3.0 opposes ``new`` to ``old`` (compared lower-case, each lemmatised by WordNet's morphy
    under every part of speech, so inflections count: ``fails`` / ``succeeds``, ``worse`` / ``better``).

    Opposed when, over every sense of both words:

    * direct antonymy: a lemma of a sense of one word is a listed antonym of a lemma of a sense of the other
      (``dry`` / ``wet``, ``fail`` / ``succeed``, ``happy`` / ``unhappy``);
    * indirect antonymy through the adjective clusters (a satellite's ``similar_to`` head stands for it): the
      antonym of one word's cluster head is a sense or cluster head of the other (``great``, a satellite of
      ``good``, against ``bad``);
    * a cluster head the word heads ``also_see`` another head whose antonym is a sense of the other word
      (``happy`` -> ``glad``, antonym ``sad``: ``happy`` and ``sad`` head separate clusters, which the two
      rules above do not connect). Only the word's own head senses are followed, one link: following the
      links from satellites' heads refused synonyms such as ``bad`` / ``awful``.

    Symmetric; a word WordNet does not know opposes nothing. Polysemy makes a few synonym pairs opposed too
    (e.g. ``strong`` / ``hard``: 12 of 8,496 sampled adjective synonym pairs in a one-off check, not kept in the
    repository). Cached per word and pair.
    """
    a, b = old.lower(), new.lower()
    if a == b:
        return False
    return _opposed(a, b) if a <= b else _opposed(b, a)


def antonym_swaps(original: str, perturbed: str) -> list[tuple[str, str]]:
    """The ``(old, new)`` word swaps of ``perturbed`` against ``original`` that :func:`antonymous` opposes, words
    aligned by position (a word swap keeps the word count; texts whose counts differ give ``[]``). Counts how
    many of an attack's stored results are label changes by antonym (``bench/text_attacks.py``)."""
    a, b = AttackedText.from_text(original), AttackedText.from_text(perturbed)
    if a.num_words != b.num_words:
        return []
    return [(x, y) for x, y in zip(a.words, b.words) if x != y and antonymous(x, y)]


class NoAntonym(Constraint):
    """No changed word is a WordNet antonym of the word it replaces (:func:`antonymous`: direct antonymy over
    every sense of both lemmatised words, and indirect antonymy through adjective clusters).

    Counter-fitted word vectors (Mrkšić et al., "Counter-fitting Word Vectors to Linguistic Constraints",
    NAACL 2016), TextFooler's and TextAttack's neighbour lists, push apart antonym pairs taken from WordNet
    and PPDB; the neighbours here come from input embeddings that put antonyms close (``good`` / ``bad``,
    ``dry`` / ``wet``), so the recipes that draw candidates from embedding neighbours or gradients refuse
    WordNet's antonyms explicitly instead. A swap that flips the label by flipping the meaning is a label
    change, not an adversarial example.

    It does not catch sentiment flips between words WordNet does not oppose (``bored`` -> ``fun``,
    ``pointless`` -> ``hilarious``, ``mistake`` -> ``correct``), nor PPDB's antonyms that WordNet lacks,
    nor negations added or removed around a word; no sentiment lexicon is used.
    """

    name: ClassVar[str] = "no-antonym"

    def _ok(self, original: AttackedText, text: AttackedText) -> bool:
        return not any(antonymous(original.words[i], text.words[i]) for i in text.changed)

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [self._ok(original, c) for c in candidates]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of characters); common ends are stripped first."""
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    ha, hb = len(a), len(b)
    while ha > lo and hb > lo and a[ha - 1] == b[hb - 1]:
        ha, hb = ha - 1, hb - 1
    a, b = a[lo:ha], b[lo:hb]
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class EditDistance(Constraint):
    """The character edit distance between the original and the perturbed text is at most ``max_edits``
    (DeepWordBug's recipe in TextAttack: 30).

    A candidate that keeps the original's separators (every word swap does) is first judged by the sum of
    its changed words' distances, an upper bound of the whole texts' distance (edit each word in place):
    at most ``max_edits`` decides it without the quadratic comparison of the whole texts, which is made
    only otherwise. The decisions are those of :func:`levenshtein` on the whole texts.
    """

    name: ClassVar[str] = "edit-distance"

    def __init__(self, max_edits: int = 30) -> None:
        self.max_edits = max_edits

    def _within(self, original: AttackedText, text: AttackedText) -> bool:
        if text.num_words == original.num_words and text.pieces[0::2] == original.pieces[0::2]:
            bound = 0
            for a, b in zip(original.words, text.words):
                if a != b:
                    bound += levenshtein(a, b)
                    if bound > self.max_edits:
                        break
            if bound <= self.max_edits:
                return True
        return levenshtein(original.text, text.text) <= self.max_edits

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        return [self._within(original, c) for c in candidates]


class PairEncoder(Protocol):
    """Anything with ``cosine(texts_a, texts_b) -> (N,)`` (e.g. :class:`~mlsafety.robustness.text.SentenceEncoder`)."""

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor: ...


class SentenceSimilarity(Constraint):
    """The sentence embeddings of original and perturbed text stay similar (TextFooler's USE constraint).

    The embedded MiniLM encoder stands in for the Universal Sentence Encoder: cosine (or angular
    similarity ``1 - arccos(cos) / pi``, TextAttack's metric for TextFooler) of mean-pooled
    embeddings of the ``window`` words around the changed word, in the original and in the
    candidate (TextFooler's window of 15; None: whole texts). Which changed words: ``last``, the one
    each step changes (as TextAttack), or ``all``, every changed word's window (stricter). A text
    shorter than the window is compared whole, or accepted when ``skip_short`` (TextAttack's
    ``skip_text_shorter_than_window``, on in its TextFooler recipe). The reference is the original text, or with
    ``compare_against_original=False`` the text each candidate was made from (TextFooler, Jin et al. 2020: each
    step's window against the current text's; TextAttack's recipe sets the same flag), so each step's change is
    judged on its own.

    Args:
        encoder: the sentence encoder (the recipes pass the shared MiniLM one).
        threshold: similarity at least (TextFooler in TextAttack: 0.840845057, angular).
        metric: ``angular`` or ``cosine``.
        window: words in the window (None: whole texts).
        windows: ``last`` or ``all``.
        skip_short: accept texts shorter than the window without comparing.
        compare_against_original: compare with the original text (True) or with the candidate's parent (False;
            :meth:`check` then accepts a finished text, which does not show the texts it passed through).
    """

    name: ClassVar[str] = "sentence-similarity"

    def __init__(
        self,
        encoder: PairEncoder,
        threshold: float = 0.840845057,
        metric: Literal["angular", "cosine"] = "angular",
        window: int | None = 15,
        windows: Literal["last", "all"] = "last",
        skip_short: bool = True,
        compare_against_original: bool = True,
    ) -> None:
        if metric not in ("angular", "cosine"):
            raise InputError(f"metric must be 'angular' or 'cosine', got {metric!r}")
        if windows not in ("last", "all"):
            raise InputError(f"windows must be 'last' or 'all', got {windows!r}")
        self.encoder = encoder
        self.threshold = threshold
        self.metric = metric
        self.window = window
        self.windows = windows
        self.skip_short = skip_short
        self.compare_against_original = compare_against_original

    def check(self, original: AttackedText, final: AttackedText) -> bool:
        if not self.compare_against_original:
            return True  # each step was judged against its parent, which a finished text does not show
        return super().check(original, final)

    def _pairs(self, original: AttackedText, text: AttackedText) -> list[tuple[str, str]] | None:
        """Window pairs to compare; None: accepted without comparing."""
        if self.window is not None and text.num_words < self.window:
            if self.skip_short:
                return None
            return [(original.text, text.text)]
        if self.window is None:
            return [(original.text, text.text)]
        if self.windows == "last":
            idx = [text.last] if text.last is not None else list(text.changed[-1:])
        else:
            idx = list(text.changed)
        return [(original.window(i, self.window), text.window(i, self.window)) for i in idx]

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        cos = self.encoder.cosine(a, b)
        return angular(cos) if self.metric == "angular" else cos

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        pairs = [self._pairs(original, c) for c in candidates]
        flat = [p for ps in pairs if ps for p in ps]
        if not flat:
            return [True] * len(candidates)
        sims = self.similarity([p[0] for p in flat], [p[1] for p in flat]).tolist()
        out, k = [], 0
        for ps in pairs:
            if not ps:
                out.append(True)
                continue
            out.append(all(s >= self.threshold - 1e-6 for s in sims[k : k + len(ps)]))
            k += len(ps)
        return out
