"""HotFlip (Ebrahimi et al., "HotFlip: White-Box Adversarial Examples for Text Classification", ACL 2018).

White box: the attacker reads the gradient of the loss with respect to the victim's input embeddings
and estimates, to first order, how much each swap of word ``i`` for vocabulary word ``w`` raises the
loss, ``(e_w - e_i) . grad_i`` (:func:`~._gradients.swap_scores`; the paper's eq. 3 written for word
tokens instead of one-hot characters). A beam search (width ``beam_width``) then tries, for every
text in the beam, the ``top_n`` best-estimated swaps at every word the constraints let change, scores
all of them with the model in one padded batch, and keeps the best ``beam_width``; it stops at the
first candidate that reaches the goal.

As TextAttack's ``HotFlipEbrahimi2017`` recipe (the word-level form the paper sketches in section 5),
the recipe keeps stop words, changes each word at most once, at most ``max_words`` words, requires a
word-embedding cosine of ``min_cos_sim`` between a word and its replacement and the same WordNet part of
speech. The vectors are the victim's own input embeddings (no counter-fitted vectors are installed),
whose cosines run lower than counter-fitted ones: the default is 0.5 (TextFooler's threshold, as the
textfooler recipe here) instead of TextAttack's 0.8 for HotFlip. Those embeddings (and the gradient
ranking over them) put antonyms close, which counter-fitting (Mrkšić et al. 2016) pushes apart, so the
recipe also refuses a swap for a WordNet antonym (:class:`~.constraints.NoAntonym`, a departure;
``refuse_antonyms=False`` turns it off).

Deviations from the paper: whole-word swaps over the vocabulary entries that are one alphabetic
word (:func:`~._gradients.whole_word_vocabulary`), not character flips; a word the tokenizer splits
into several tokens is not swapped (its first-order estimate would compare token sequences of
different lengths); the first-order ranking is taken among the words the embedding-cosine constraint
accepts (TextAttack ranks the whole vocabulary and lets the constraint reject the winners afterwards,
which on input-embedding neighbours leaves almost nothing to try); gradient passes (one batched
forward and backward over the beam per step) are not counted as queries, as in TextAttack, only the
texts the model scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.core import Classifier, InputError, ModelLike, Param, as_classifier
from mlsafety.robustness.text import _resources
from mlsafety.robustness.text._base import (
    Attack,
    AttackedText,
    Constraint,
    Problem,
    QueryResult,
    SearchMethod,
    Transformation,
    check_text_classifier,
)
from mlsafety.robustness.text._gradients import (
    embedding_gradients,
    token_spans,
    whole_word_vocabulary,
)
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text.goals import Untargeted


def word_char_spans(text: AttackedText) -> list[tuple[int, int]]:
    """``[start, end)`` character span of each word of ``text`` in ``text.text``."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for k, piece in enumerate(text.pieces):
        if k % 2 == 1:
            spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return spans


class GradientWordSwap(Transformation):
    """Replacement words ranked by the first-order estimate of the loss they add (HotFlip's swap).

    :meth:`ranked` does the work for several texts in one forward and backward pass;
    :meth:`replacements` (one text, the loss of the class the model now predicts, which is the true
    label of an example under untargeted attack until it succeeds) lets other searches use it too.

    Args:
        model: the white-box victim (a text classifier with an input-embedding layer).
        top_n: replacements per word, best estimate first.
        min_cos: only vocabulary words whose input embedding has at least this cosine with the word's
            are ranked (-1: all), so the ``top_n`` tried are ones a word-embedding constraint can accept.
    """

    name: ClassVar[str] = "gradient-word-swap"

    def __init__(self, model: ModelLike, top_n: int = 5, min_cos: float = -1.0) -> None:
        self.clf: Classifier = as_classifier(model)
        self.top_n = int(top_n)
        self.min_cos = float(min_cos)
        self._vocab: tuple[torch.Tensor, list[str]] | None = None

    @property
    def vocabulary(self) -> tuple[torch.Tensor, list[str]]:
        """Whole-word vocabulary ids and words of the victim's tokenizer (computed once)."""
        if self._vocab is None:
            ids, words = whole_word_vocabulary(self.clf.tokenizer)
            if not words:
                raise InputError("hotflip: the tokenizer's vocabulary has no whole-word entries to swap in")
            self._vocab = (ids, words)
        return self._vocab

    def ranked(
        self,
        texts: Sequence[AttackedText],
        indices: Sequence[Sequence[int]],
        labels: Sequence[int],
        targets: Sequence[int] | None = None,
    ) -> list[list[tuple[float, int, str]]]:
        """For each text, ``(estimate, word index, replacement)`` of the ``top_n`` swaps at each of its
        ``indices`` that are one token, best estimate first within each word."""
        ids, words = self.vocabulary
        clf = self.clf
        tgt = None if targets is None else torch.tensor(list(targets), dtype=torch.long)
        eg = embedding_gradients(clf, [t.text for t in texts], torch.tensor(list(labels), dtype=torch.long), tgt)
        with torch.no_grad():
            table = clf.embedding_layer(ids.to(clf.device)).float()  # (V', D)
        lengths = eg.batch.lengths.tolist()
        out: list[list[tuple[float, int, str]]] = []
        for b, (text, idx) in enumerate(zip(texts, indices)):
            spans = token_spans(clf.tokenizer, text.text, word_char_spans(text), int(lengths[b]))
            single = [i for i in idx if len(spans[i]) == 1]
            if not single:
                out.append([])
                continue
            pos = torch.tensor([spans[i][0] for i in single], device=eg.grad.device)
            g = eg.grad[b, pos].float()  # (P, D)
            old = eg.embeddings[b, pos].float()
            est = g @ table.T - (old * g).sum(dim=1, keepdim=True)  # (P, V'): first-order loss rise
            if self.min_cos > -1.0:
                cos = torch.nn.functional.normalize(old, dim=1) @ torch.nn.functional.normalize(table, dim=1).T
                est = est.masked_fill(cos < self.min_cos, float("-inf"))
            current = [text.words[i].lower() for i in single]
            for p, word in enumerate(current):  # swapping a word for itself is no swap
                same = [k for k, w in enumerate(words) if w.lower() == word]
                if same:
                    est[p, same] = float("-inf")
            k = min(self.top_n, est.shape[1])
            top = est.topk(k, dim=1)
            rows: list[tuple[float, int, str]] = []
            for p, i in enumerate(single):
                for s, v in zip(top.values[p].tolist(), top.indices[p].tolist()):
                    if s != float("-inf"):
                        rows.append((float(s), i, words[v]))
            out.append(rows)
        return out

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        with torch.inference_mode():
            pred = int(self.clf.logits([text.text]).argmax(dim=1)[0])
        return [w for _, _, w in self.ranked([text], [[index]], [pred])[0]]


class HotFlipSearch(SearchMethod):
    """Beam search over gradient-ranked swaps (HotFlip's search).

    Each step: one batched gradient pass over the beam, the ``top_n`` swaps of each modifiable word of
    each beam text, constraints applied, every candidate scored by the model in one batch; the best
    ``beam_width`` by the goal's score form the next beam. Stops at the first candidate that reaches the
    goal (the best-scored of them), when no candidate is left, or when the query budget is spent.

    Args:
        swap: the :class:`GradientWordSwap` (the attack's transformation).
        beam_width: texts kept per step.
    """

    name: ClassVar[str] = "hotflip-beam"

    def __init__(self, swap: GradientWordSwap, beam_width: int = 10) -> None:
        self.swap = swap
        self.beam_width = int(beam_width)

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        beam: list[AttackedText] = [problem.original]
        best, best_score = problem.original, float(start.scores[0])
        targets = None if problem.target is None else [problem.target] * self.beam_width
        for _ in range(problem.original.num_words):  # each step changes one more word at most
            if not beam or problem.exhausted:
                break
            indices = [problem.modifiable(t) for t in beam]
            ranked = self.swap.ranked(
                beam, indices, [problem.label] * len(beam), targets[: len(beam)] if targets else None
            )
            cands: list[AttackedText] = []
            parents: list[AttackedText] = []
            seen: set[str] = set()
            for text, rows in zip(beam, ranked):
                for _, i, w in rows:
                    c = text.replace_word(i, w)
                    if c.text not in seen:
                        seen.add(c.text)
                        cands.append(c)
                        parents.append(text)
            cands = problem.allowed(cands, parents)
            if not cands:
                break
            result = problem.query(cands)
            if len(result) == 0:
                break
            if bool(result.reached.any()):  # the best-scored of those that reach the goal
                scores = result.scores.masked_fill(~result.reached, float("-inf"))
                return result.texts[int(scores.argmax())]
            order = result.scores.argsort(descending=True)[: self.beam_width].tolist()
            beam = [result.texts[j] for j in order]
            if float(result.scores[order[0]]) > best_score:
                best, best_score = beam[0], float(result.scores[order[0]])
        return best


def hotflip_constraints(
    model: ModelLike, max_words: int, min_cos_sim: float, refuse_antonyms: bool = True
) -> list[Constraint]:
    """The recipe's constraints (TextAttack's ``HotFlipEbrahimi2017`` set), from the building blocks; the word
    vectors are the victim's input embeddings; ``refuse_antonyms`` adds :class:`~.constraints.NoAntonym`."""
    from mlsafety.robustness.text.constraints import (
        MaxWordsPerturbed,
        NoAntonym,
        PartOfSpeech,
        RepeatModification,
        StopWords,
        WordEmbeddingDistance,
    )
    from mlsafety.robustness.text.transformations import word_vectors

    return [
        RepeatModification(),
        StopWords(),
        MaxWordsPerturbed(max_words=max_words),
        WordEmbeddingDistance(word_vectors("victim", as_classifier(model)), min_cos_sim),
        PartOfSpeech(),
        *([NoAntonym()] if refuse_antonyms else []),
    ]


@register_text_attack("hotflip", tags=("white-box", "word-level"))
class HotFlip(Recipe):
    """HotFlip (Ebrahimi et al. 2018), word level: gradient-ranked swaps, beam search; see the module docs."""

    beam_width = Param(10, int, low=1, doc="texts kept per beam-search step")
    top_n = Param(5, int, low=1, doc="gradient-ranked replacements tried per word per step (TextAttack: 1)")
    max_words = Param(2, int, low=1, doc="words changed at most")
    min_cos_sim = Param(
        0.5, float, low=-1, high=1, doc="input-embedding cosine between a word and its replacement (TextAttack: 0.8)"
    )
    refuse_antonyms = Param(True, bool, doc="refuse a swap for a WordNet antonym (NoAntonym; False: the old recipe)")

    name: ClassVar[str] = "hotflip"

    def build(self, model: ModelLike, **parts: Any) -> Attack:
        """The attack on ``model``; ``constraints=`` replaces the recipe's constraint list."""
        clf = as_classifier(model)
        check_text_classifier(clf, "hotflip")
        constraints = parts.get("constraints")
        # the ranking filter mirrors the recipe's own embedding constraint (given constraints: no filter)
        swap = GradientWordSwap(clf, top_n=self.top_n, min_cos=self.min_cos_sim if constraints is None else -1.0)
        if constraints is None:
            _resources.wordnet()  # a missing WordNet is named before any work
            constraints = hotflip_constraints(clf, self.max_words, self.min_cos_sim, self.refuse_antonyms)
        return Attack(
            clf,
            Untargeted(),
            swap,
            constraints,
            HotFlipSearch(swap, self.beam_width),
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            seed=self.seed,
            name=self.name,
        )
