"""Search methods: greedy word substitution in order of word importance, and beam search.

:class:`GreedyWordImportance` ranks the modifiable words once, then walks them in order, each time
querying every acceptable replacement of the word in one batch and keeping the best if it raises
the attacker's score (TextAttack's ``GreedyWordSwapWIR``). The ranking:

- ``delete``: the goal score of the text with the word deleted, plus, under an untargeted goal, where the
  deletion changes the prediction to ``y'``, the rise of ``p(y')`` (TextFooler, Jin et al. 2020, eq. 2:
  ``I_w = P_y(x) - P_y(x_w) + [F(x_w) = y' != y] (P_y'(x_w) - P_y'(x))``; TextAttack's ``delete`` leaves the
  second term out, which changes the order only with more than two classes);
- ``unk``: the same with the word replaced by the tokenizer's unknown token (DeepWordBug's default
  in TextAttack);
- ``pwws``: probability-weighted word saliency (Ren et al. 2019): ``softmax(S)_i * dP*_i``, with
  saliency ``S_i`` the score gain of replacing word ``i`` by the unknown token and ``dP*_i`` the
  largest score gain among word ``i``'s acceptable replacements;
- ``random``: a seeded shuffle.

When several replacements of one word reach the goal, the one with the highest score is kept.
:class:`BeamSearch` keeps the ``beam_width`` best texts and expands each at every modifiable word.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from mlsafety.core import InputError
from mlsafety.robustness.text._base import AttackedText, Problem, QueryResult, SearchMethod

Importance = Literal["delete", "unk", "pwws", "random"]


def unknown_token(problem: Problem) -> str:
    """The victim tokenizer's unknown token (``[UNK]`` when it names none)."""
    tok = getattr(problem.model.clf.tokenizer, "unk_token", None)
    return tok if isinstance(tok, str) and tok else "[UNK]"


class GreedyWordImportance(SearchMethod):
    """Greedy substitution in order of word importance (see the module docstring).

    Args:
        importance: ``delete``, ``unk``, ``pwws`` or ``random``.
    """

    name: ClassVar[str] = "greedy-word-importance"

    def __init__(self, importance: Importance = "delete") -> None:
        if importance not in ("delete", "unk", "pwws", "random"):
            raise InputError(f"importance must be delete, unk, pwws or random, got {importance!r}")
        self.importance = importance

    def order(self, problem: Problem, start: QueryResult) -> list[int]:
        """Modifiable word indices with at least one raw replacement, most important first."""
        text = problem.original
        indices = [
            i for i in problem.modifiable(text) if problem.attack.transformation.replacements(text, i, problem.g)
        ]
        if len(indices) <= 1 or self.importance == "random":
            perm = torch.randperm(len(indices), generator=problem.g).tolist()
            return [indices[k] for k in perm] if self.importance == "random" else indices
        base = float(start.scores[0])
        if self.importance == "delete":
            probes = [text.without_word(i) for i in indices]
        else:
            probes = [text.without_word(i, mask=unknown_token(problem)) for i in indices]
        logits, scores, _, n = problem.score_texts(probes)
        if self.importance == "delete" and n and not problem.attack.goal.targeted:
            # Jin et al.'s eq. 2: a deletion that changes the prediction to y' also gains p(y') - p0(y')
            p0, p = start.logits[0].float().softmax(-1), logits.float().softmax(-1)
            new = p.argmax(-1)
            rise = p.gather(1, new[:, None])[:, 0] - p0[new]
            scores = scores + torch.where(new != int(start.logits[0].argmax()), rise, torch.zeros_like(rise))
        if n < len(indices):  # the budget ran out while ranking: rank what was scored, the rest after
            scores = torch.cat([scores, torch.full((len(indices) - n,), -float("inf"))])
        if self.importance == "pwws":
            saliency = torch.softmax(scores - base, dim=0)
            gains = torch.zeros(len(indices))
            groups = [problem.candidates(text, [i]) for i in indices]
            res = problem.query([c for grp in groups for c in grp])  # every word's replacements in one batch
            lo = 0
            for k, grp in enumerate(groups):
                got = res.scores[lo : min(lo + len(grp), len(res))]
                if len(got):
                    gains[k] = float(got.max()) - base
                lo += len(grp)
            scores = saliency * gains
        ranked = sorted(range(len(indices)), key=lambda k: (-float(scores[k]), k))
        return [indices[k] for k in ranked]

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        current, score = problem.original, float(start.scores[0])
        for i in self.order(problem, start):
            if problem.exhausted:
                break
            cands = problem.candidates(current, [i])
            if not cands:
                continue
            res = problem.query(cands)
            if not len(res):
                break
            k = res.best()
            if bool(res.reached[k]):
                return res.texts[k]
            if float(res.scores[k]) > score:
                current, score = res.texts[k], float(res.scores[k])
        return current


class BeamSearch(SearchMethod):
    """Beam search over single-word substitutions (TextAttack's ``BeamSearch``).

    Each step expands every text in the beam at every modifiable word, queries all candidates in one
    batch and keeps the ``beam_width`` best; it stops at the first candidate that reaches the goal,
    when no candidate is left, when the budget runs out, or when the beam comes back to a beam it held
    since the last step that scored a new text. Such steps cost no query (their texts are cached) and
    keep the best text as it is, so from there the search would cycle forever (without
    :class:`~.constraints.RepeatModification` a beam can return to texts it has seen); the attack then
    failed, with the queries spent. (A transformation that draws at random might offer a new text on a
    later visit; the search does not wait for it.) A transformation that keeps offering new texts (random
    character insertions with no :class:`~.constraints.RepeatModification` and no query budget) would keep
    it going forever: it also stops after ``max_steps`` steps (a deviation from TextAttack, which has no such
    bound and relies on the recipe's constraints).

    Args:
        beam_width: texts kept per step.
        max_steps: steps at most; None: four per word of the text (a search under RepeatModification, as
            every recipe runs it, changes a new word each step and so ends within one per word).
    """

    name: ClassVar[str] = "beam"

    def __init__(self, beam_width: int = 8, max_steps: int | None = None) -> None:
        if beam_width < 1:
            raise InputError(f"beam_width must be >= 1, got {beam_width}")
        if max_steps is not None and max_steps < 1:
            raise InputError(f"max_steps must be >= 1 or None (four per word), got {max_steps}")
        self.beam_width = beam_width
        self.max_steps = max_steps

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        beam = [problem.original]
        best, best_score = problem.original, float(start.scores[0])
        idle: set[tuple[AttackedText, ...]] = set()  # beams held since the last step that scored a new text
        steps_left = self.max_steps if self.max_steps is not None else 4 * max(1, problem.original.num_words)
        while not problem.exhausted and steps_left > 0:
            steps_left -= 1
            seen: set[str] = set()
            cands: list[AttackedText] = []
            for text in beam:
                for c in problem.candidates(text):
                    if c.text not in seen:
                        seen.add(c.text)
                        cands.append(c)
            if not cands:
                break
            spent = problem.queries
            res = problem.query(cands)
            if not len(res):
                break
            k = res.best()
            if bool(res.reached[k]):
                return res.texts[k]
            if float(res.scores[k]) > best_score:
                best, best_score = res.texts[k], float(res.scores[k])
            top = res.scores.topk(min(self.beam_width, len(res))).indices.tolist()
            if problem.queries > spent:
                idle.clear()
            else:  # every candidate was scored before: the step is a function of the beam alone (and g)
                idle.add(tuple(beam))  # texts with what they changed: constraints may read it
            beam = [res.texts[j] for j in top]
            if tuple(beam) in idle:
                break  # a beam met again with nothing new on the way: the same steps would repeat forever
        return best
