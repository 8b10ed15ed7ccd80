"""The parts every text attack is made of, and the :class:`Attack` that composes them.

The split follows TextAttack (Morris et al., "TextAttack: A Framework for Adversarial Attacks, Data
Augmentation, and Adversarial Training in NLP", EMNLP 2020 demos): a **goal function** says how good
a perturbed text is for the attacker and when the attack has succeeded, a **transformation** proposes
replacements for one word, **constraints** say which words may change and which candidates are
acceptable, and a **search method** decides in which order to try them. :class:`Attack` runs the
search once per example with a per-example query budget; the model queries of a search step go
through the model together, in padded batches (:class:`ModelQueries`: 32 texts a pass on the CPU by
default, where larger passes cost more per text, 128 on a GPU), never one text at a time.

Texts are handled as :class:`AttackedText`: the words of the original text (``\\w+`` runs, with inner
apostrophes and hyphens: ``n't``, ``well-made``) and the separators between them, so a word can be
replaced and the text rebuilt with its punctuation and spacing intact. Candidates keep the number of
words; only word-importance scoring deletes words (:meth:`AttackedText.without_word`, a plain string).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mlsafety.core import (
    Classifier,
    InputError,
    ModelLike,
    Texts,
    as_classifier,
    frozen,
)
from mlsafety.core import generator as make_generator

WORD = re.compile(r"\w+(?:['\u2019-]\w+)*")
"""What counts as a word: a run of word characters, with inner apostrophes or hyphens kept."""

Status = Literal["succeeded", "failed", "skipped"]
"""``skipped``: the model already misclassified the original, or it already meets the goal (no attack run, as in
TextAttack: a targeted text whose target is its true class among them; a targeted attack skips every
misclassified original too, where TextAttack attacks those not in the target class)."""


# --- the text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackedText:
    """A text split into words and separators that remembers its original words and what was changed.

    ``pieces`` alternates separators and words: ``(sep_0, word_0, sep_1, ..., word_{n-1}, sep_n)``.

    Attributes:
        pieces: separators and words (``2 * num_words + 1`` strings).
        original_words: the words of the text the attack started from (same count).
        modified: indices of words replaced at least once on the way here (the repeated-modification
            constraint reads it; a word changed back to its original stays in it).
        last: index of the word changed to make this text from its parent, or None for an original.
    """

    pieces: tuple[str, ...]
    original_words: tuple[str, ...]
    modified: frozenset[int] = frozenset()
    last: int | None = None

    @classmethod
    def from_text(cls, text: str) -> AttackedText:
        """Split ``text`` into words and separators (see :data:`WORD`)."""
        pieces: list[str] = []
        pos = 0
        for m in WORD.finditer(text):
            pieces.append(text[pos : m.start()])
            pieces.append(m.group(0))
            pos = m.end()
        pieces.append(text[pos:])
        words = tuple(pieces[1::2])
        return cls(tuple(pieces), words)

    @property
    def words(self) -> tuple[str, ...]:
        return self.pieces[1::2]

    @property
    def num_words(self) -> int:
        return len(self.pieces) // 2

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __str__(self) -> str:
        return self.text

    @property
    def changed(self) -> tuple[int, ...]:
        """Indices whose word differs from the original's, sorted."""
        return tuple(i for i, (w, o) in enumerate(zip(self.words, self.original_words)) if w != o)

    def replace_word(self, index: int, word: str) -> AttackedText:
        """A copy with word ``index`` replaced by ``word`` (which must be one word, without separators)."""
        if not 0 <= index < self.num_words:
            raise IndexError(f"word index {index} out of range for a text of {self.num_words} words")
        pieces = list(self.pieces)
        pieces[2 * index + 1] = word
        return AttackedText(tuple(pieces), self.original_words, self.modified | {index}, index)

    def replace_words(self, replacements: dict[int, str]) -> AttackedText:
        """A copy with several words replaced (``last`` is the highest index)."""
        out = self
        for i in sorted(replacements):
            out = out.replace_word(i, replacements[i])
        return out

    def without_word(self, index: int, mask: str | None = None) -> str:
        """The text with word ``index`` deleted (with the separator before it), or replaced by ``mask``."""
        pieces = list(self.pieces)
        if mask is not None:
            pieces[2 * index + 1] = mask
            return "".join(pieces)
        if index > 0 or len(pieces) <= 3:
            del pieces[2 * index : 2 * index + 2]  # the separator before it and the word
        else:  # the first word: drop it and the separator after it
            del pieces[1:3]
        return "".join(pieces)

    def window(self, index: int, size: int | None) -> str:
        """The words within ``size // 2`` of ``index`` joined by spaces (TextFooler's similarity window;
        the window slides to keep ``size`` words near the ends); the whole text when ``size`` is None."""
        if size is None or size >= self.num_words:
            return self.text
        half = size // 2
        lo = max(0, min(index - half, self.num_words - size))
        return " ".join(self.words[lo : lo + size])

    def marked(self, left: str = "[[", right: str = "]]") -> str:
        """The text with every changed word wrapped in ``left`` / ``right`` (how artifacts show them)."""
        pieces = list(self.pieces)
        for i in self.changed:
            pieces[2 * i + 1] = f"{left}{pieces[2 * i + 1]}{right}"
        return "".join(pieces)


# --- the parts ---------------------------------------------------------------------------------


class GoalFunction:
    """What the attacker wants: a score per candidate (higher is better) and whether it has succeeded.

    Both methods take logits ``(N, K)`` of candidates of one example, its true label and its target
    (None unless targeted); a goal may read the logits any way it likes (an adaptive goal can ask a
    monitor's score on them to stay below its threshold too).
    """

    name: ClassVar[str] = "goal"
    targeted: ClassVar[bool] = False

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        """``(N,)`` scores, higher is better for the attacker."""
        raise NotImplementedError

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        """``(N,)`` bool: the candidate meets the goal."""
        raise NotImplementedError


class Transformation:
    """Proposes replacement words for one word of a text.

    Subclasses write :meth:`replacements`; :meth:`transform` turns them into candidate texts.
    ``g`` is the example's seeded generator for transformations that draw at random.
    """

    name: ClassVar[str] = "transformation"

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        """Replacement words for ``text.words[index]`` (may include it; :meth:`transform` drops it)."""
        raise NotImplementedError

    def transform(
        self, text: AttackedText, indices: Iterable[int], g: torch.Generator | None = None
    ) -> list[AttackedText]:
        """Candidates: ``text`` with one of ``indices`` replaced by each of its replacements (no duplicates)."""
        out: list[AttackedText] = []
        for i in indices:
            current = text.words[i]
            seen = {current}
            for w in self.replacements(text, i, g):
                if w and w not in seen and WORD.fullmatch(w) is not None:
                    seen.add(w)
                    out.append(text.replace_word(i, w))
        return out


class Constraint:
    """A rule a perturbation must keep, in two parts (as TextAttack's pre- and post-transformation constraints).

    :meth:`modifiable` narrows the word indices that may change next (stop words, repeated
    modification, share of words changed); :meth:`allows` judges candidate texts, all of one step in
    one call (so a sentence encoder sees them in one batch). :meth:`check` says whether a finished
    text keeps the rule: the property every returned adversarial text is tested for.

    ``compare_against_original`` (TextAttack's flag of the same name): :meth:`allows` receives the text the attack
    started from (True, the default), or the text the candidates were made from, the search's current text (False:
    a constraint on each step's change, as TextFooler's sentence similarity).
    """

    name: ClassVar[str] = "constraint"
    compare_against_original: bool = True

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        """The subset of ``indices`` this constraint lets the search change next in ``text``."""
        return indices

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        """Whether each candidate is acceptable (default: all); ``original``: the reference text (see
        ``compare_against_original``)."""
        return [True] * len(candidates)

    def check(self, original: AttackedText, final: AttackedText) -> bool:
        """Whether a finished text keeps the rule (default: :meth:`allows` on it)."""
        return bool(self.allows(original, [final])[0])


@dataclass
class QueryResult:
    """The model's verdict on a batch of candidate texts of one example.

    ``texts`` may be shorter than asked for when the budget ran out (the rest were not queried).
    """

    texts: list[AttackedText]
    logits: torch.Tensor
    scores: torch.Tensor
    reached: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)

    def best(self) -> int:
        """Index of the best candidate: a successful one first, then the highest score."""
        key = self.scores + self.reached.to(self.scores.dtype) * 1e6
        return int(key.argmax())


def check_text_classifier(clf: Classifier, who: str = "text attacks") -> None:
    """One :class:`InputError` line unless ``clf`` is a text classifier (a model with a tokenizer)."""
    if clf.modality != "text":
        raise InputError(
            f"{who} need a text classifier (a model with a tokenizer), got {type(clf.module).__name__}; "
            "pass Classifier(model, tokenizer=...)"
        )


CPU_TEXTS_PER_PASS = 32
"""Texts per forward pass on the CPU when the caller does not say. Measured on one thread (minilm-mr victim,
mr sentences of 26-27 words, and the MiniLM similarity encoder on 15-word windows): the same texts cost
10-26% more CPU time in passes of 128 (or 256) than of 32, whose activations stay in the cache; 16-64 are
within a few percent of 32. A GPU gains from more texts per pass (:func:`texts_per_pass`)."""


def texts_per_pass(module: nn.Module, batch_size: int | None, gpu: int) -> int:
    """``batch_size`` checked (>= 1), or when None the default for where ``module``'s weights are:
    :data:`CPU_TEXTS_PER_PASS` on the CPU, ``gpu`` on an accelerator."""
    if batch_size is None:
        first = next(iter(module.parameters()), None)
        return CPU_TEXTS_PER_PASS if first is None or first.device.type == "cpu" else gpu
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


class ModelQueries:
    """Batched, counted queries of a text classifier (frozen, in eval mode, without gradients).

    Every call sends its texts through the model in padded batches of up to ``batch_size``;
    ``calls`` counts forward passes and ``texts`` the texts sent.

    Args:
        model: a text classifier (an ``nn.Module`` with a tokenizer, or a :class:`~mlsafety.core.Classifier`).
        batch_size: texts per forward pass at most; None: :data:`CPU_TEXTS_PER_PASS` when the model is on
            the CPU, 128 on a GPU.
    """

    def __init__(self, model: ModelLike, batch_size: int | None = None) -> None:
        clf = as_classifier(model)
        check_text_classifier(clf)
        self.clf: Classifier = clf
        self.batch_size = texts_per_pass(clf.module, batch_size, gpu=128)
        self.calls = 0
        self.texts = 0

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Logits ``(N, K)`` on the CPU, float32."""
        if not texts:
            return torch.zeros((0, self.clf.num_classes if self.clf._num_classes else 0))
        out = []
        with frozen(self.clf.module), torch.inference_mode():
            for lo in range(0, len(texts), self.batch_size):
                chunk = list(texts[lo : lo + self.batch_size])
                self.calls += 1
                self.texts += len(chunk)
                out.append(self.clf.logits(Texts(chunk)).float().cpu())
        return torch.cat(out)


def check_classes(who: str, what: str, classes: Sequence[int], k: int | None, first: int = 0) -> None:
    """One :class:`InputError` line unless every class index (``what``: ``label`` or ``target``) is in
    ``0..k-1``; ``k`` None (the model's classes not known before its first pass): only negative ones are refused
    here (a -1 would silently read the last class), the rest at the text's first query. ``first``: the index of
    ``classes[0]`` among the texts (what the message names)."""
    for i, c in enumerate(classes, first):
        if c < 0 or (k is not None and c >= k):
            fix = (
                f"this {k}-class model; give {what}s in 0..{k - 1}" if k is not None else "the model (they start at 0)"
            )
            raise InputError(f"{who}: {what} {c} of text {i} is not a class of {fix}")


class Problem:
    """One example under attack: what a search method works with.

    A search calls :meth:`query` (scores candidates in one batch, counts queries against the
    budget, caches texts already seen), :meth:`candidates` (transformation + constraints for some
    word indices), :meth:`modifiable`, :meth:`importance_texts` queries and reads :attr:`exhausted`.

    Attributes:
        original: the text being attacked.
        label: its true label; target: the target class (targeted goals), else None.
        queries: model queries spent (texts scored, cache hits excluded).
        budget: queries allowed (None: no limit).
        exhausted: True once a query was cut short by the budget.
        g: the example's seeded generator.
    """

    def __init__(
        self,
        attack: Attack,
        original: AttackedText,
        label: int,
        target: int | None,
        g: torch.Generator,
    ) -> None:
        self.attack = attack
        self.original = original
        self.label = label
        self.target = target
        self.g = g
        self.queries = 0
        self.budget = attack.query_budget
        self.exhausted = False
        self._cache: dict[str, tuple[torch.Tensor, float, bool]] = {}

    @property
    def model(self) -> ModelQueries:
        return self.attack.queries

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.queries)

    def score_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Logits, scores and goal flags of plain strings, in one batch; uncached texts count as queries.

        Returns ``(logits, scores, reached, n)`` for the first ``n`` texts (fewer than asked when the
        budget ran out; then :attr:`exhausted` is set).
        """
        goal = self.attack.goal
        todo: list[str] = []
        for t in texts:
            if t not in self._cache and t not in todo:
                todo.append(t)
        rem = self.remaining
        n = len(texts)
        if rem is not None and len(todo) > rem:
            self.exhausted = True
            allowed = set(todo[:rem])
            todo = todo[:rem]
            n = 0
            for t in texts:  # the longest prefix whose texts are cached or allowed
                if t in self._cache or t in allowed:
                    n += 1
                else:
                    break
        if todo:
            logits = self.attack.queries.logits(todo)
            scores = goal.score(logits, self.label, self.target)
            reached = goal.reached(logits, self.label, self.target)
            self.queries += len(todo)
            for t, lg, s, r in zip(todo, logits, scores.tolist(), reached.tolist()):
                self._cache[t] = (lg, float(s), bool(r))
        rows = [self._cache[t] for t in texts[:n]]
        k = self.attack.queries.clf._num_classes or 0
        logits = torch.stack([r[0] for r in rows]) if rows else torch.zeros((0, k))
        return (
            logits,
            torch.tensor([r[1] for r in rows], dtype=torch.float32),
            torch.tensor([r[2] for r in rows], dtype=torch.bool),
            n,
        )

    def prime(self, text: str, row: tuple[torch.Tensor, float, bool]) -> None:
        """Record the logits, goal score and goal flag of ``text`` scored outside :meth:`score_texts` (the attack's
        batched pass over every original) as one query, as if this problem had asked for it."""
        if text not in self._cache:
            self._cache[text] = row
            self.queries += 1

    def query(self, candidates: Sequence[AttackedText]) -> QueryResult:
        """Score candidate texts in one padded batch (see :meth:`score_texts`)."""
        logits, scores, reached, n = self.score_texts([c.text for c in candidates])
        return QueryResult(list(candidates[:n]), logits, scores, reached)

    def modifiable(self, text: AttackedText) -> list[int]:
        """Word indices of ``text`` every constraint lets the search change next, sorted."""
        allowed = set(range(text.num_words))
        for c in self.attack.constraints:
            allowed = c.modifiable(text, allowed)
        return sorted(allowed)

    def candidates(self, text: AttackedText, indices: Iterable[int] | None = None) -> list[AttackedText]:
        """Candidates of the transformation at ``indices`` (default: every modifiable index) that every
        constraint allows, in the transformation's order."""
        allowed = set(self.modifiable(text))
        chosen = sorted(allowed) if indices is None else [i for i in indices if i in allowed]
        cands = self.attack.transformation.transform(text, chosen, self.g)
        return self.allowed(cands, [text] * len(cands))

    def allowed(self, candidates: Sequence[AttackedText], parents: Sequence[AttackedText]) -> list[AttackedText]:
        """The candidates every constraint allows, in order; ``parents[k]`` is the text candidate ``k`` was made
        from, the reference of a constraint with ``compare_against_original`` False (the original is every other's).
        Each constraint judges the candidates in one call per reference (one call for the original)."""
        pairs = list(zip(candidates, parents, strict=True))
        for c in self.attack.constraints:
            if not pairs:
                break
            if c.compare_against_original:
                keep = c.allows(self.original, [x for x, _ in pairs])
            else:
                keep = [False] * len(pairs)
                groups: dict[str, list[int]] = {}
                for k, (_, parent) in enumerate(pairs):
                    groups.setdefault(parent.text, []).append(k)
                for ks in groups.values():
                    for k, ok in zip(ks, c.allows(pairs[ks[0]][1], [pairs[k][0] for k in ks])):
                        keep[k] = ok
            pairs = [xp for xp, k in zip(pairs, keep) if k]
        return [x for x, _ in pairs]


class SearchMethod:
    """Decides which candidates to try; :meth:`search` returns the final text of one example.

    It must stop when a queried candidate reaches the goal (return it) or when
    ``problem.exhausted``; otherwise it returns its best text (the attack then failed).
    """

    name: ClassVar[str] = "search"

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        """The attack's final text; ``start`` is the original's query (one text, goal not reached)."""
        raise NotImplementedError


# --- results -----------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """What attacking one example gave.

    Attributes:
        original: the text attacked; perturbed: the final text (the original when skipped).
        label: true label; original_pred / perturbed_pred: the model's predictions.
        changed: indices of words that differ from the original.
        num_words: words in the original.
        queries: model queries spent on this example (the original's included).
        status: ``succeeded``, ``failed`` or ``skipped`` (already misclassified, or already meeting the goal:
            a targeted text whose target is its label); ``failed`` too for a text with no word the constraints
            let change (the search has nothing to try).
        similarity: cosine similarity of original and perturbed sentence embeddings (when the attack
            has a sentence encoder), else None.
        target: the target class of a targeted attack.
    """

    original: str
    perturbed: str
    label: int
    original_pred: int
    perturbed_pred: int
    changed: tuple[int, ...]
    num_words: int
    queries: int
    status: Status
    similarity: float | None = None
    target: int | None = None
    marked: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == "succeeded"

    @property
    def perturbed_share(self) -> float:
        """Share of the original's words that were changed."""
        return len(self.changed) / self.num_words if self.num_words else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (what artifacts store)."""
        return {
            "original": self.original,
            "perturbed": self.perturbed,
            "marked": self.marked,
            "label": self.label,
            "target": self.target,
            "original_pred": self.original_pred,
            "perturbed_pred": self.perturbed_pred,
            "changed": list(self.changed),
            "num_words": self.num_words,
            "perturbed_share": self.perturbed_share,
            "queries": self.queries,
            "status": self.status,
            "similarity": self.similarity,
        }


SimilarityFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
"""``(texts_a, texts_b) -> (N,)`` sentence similarities, computed as one batch."""


# --- the attack --------------------------------------------------------------------------------


class Attack:
    """A goal function, a transformation, constraints and a search method, run on a text classifier.

    Args:
        model: the victim: a text classifier (``nn.Module`` with a tokenizer, or a ``Classifier``).
        goal: the :class:`GoalFunction`.
        transformation: the :class:`Transformation`.
        constraints: the :class:`Constraint` s every candidate must keep.
        search: the :class:`SearchMethod`.
        query_budget: model queries per example at most (None: no limit); must be >= 1.
        batch_size: texts per forward pass at most (None: see :class:`ModelQueries`).
        similarity: sentence similarity reported for each result (e.g. the MiniLM encoder's cosine).
        seed: seed of the per-example generators (random transformations).
        name: what results and errors call the attack.

    Example:
        >>> attack = mlsafety.robustness.text.create("textfooler", model)
        >>> results = attack.attack(["a gripping , funny film"], [1])
    """

    def __init__(
        self,
        model: ModelLike,
        goal: GoalFunction,
        transformation: Transformation,
        constraints: Sequence[Constraint],
        search: SearchMethod,
        query_budget: int | None = None,
        batch_size: int | None = None,
        similarity: SimilarityFn | None = None,
        seed: int = 0,
        name: str = "text-attack",
    ) -> None:
        if query_budget is not None and int(query_budget) < 1:
            raise InputError(f"{name}: query_budget must be at least 1 query per example (or None), got {query_budget}")
        self.queries = ModelQueries(model, batch_size)
        self.goal = goal
        self.transformation = transformation
        self.constraints = list(constraints)
        self.search = search
        self.query_budget = None if query_budget is None else int(query_budget)
        self.similarity = similarity
        self.seed = int(seed)
        self.name = name

    @property
    def classifier(self) -> Classifier:
        return self.queries.clf

    def check_texts(self, texts: Sequence[str]) -> list[AttackedText]:
        """The texts as :class:`AttackedText`; one :class:`InputError` line for an empty text or one
        with no word the constraints let change (e.g. only stop words).

        :meth:`attack` does not call it: there such a text is a failed attack (or skipped), as in TextAttack;
        a caller that wants the user told first (the ``attack-text`` command) calls it before attacking."""
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"{self.name}: text {i} is empty; remove empty texts before attacking")
            at = AttackedText.from_text(t)
            if at.num_words == 0:
                raise InputError(f"{self.name}: text {i} ({t[:40]!r}) has no words to perturb; remove it")
            allowed = set(range(at.num_words))
            for c in self.constraints:
                allowed = c.modifiable(at, allowed)
            if not allowed:
                raise InputError(
                    f"{self.name}: text {i} ({t[:40]!r}) has no word the constraints let change (only stop words?); "
                    "remove it or relax the stop-word list"
                )
            out.append(at)
        return out

    def attack(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | torch.Tensor,
        targets: Sequence[int] | torch.Tensor | None = None,
    ) -> list[AttackResult]:
        """Attack each text; every input is checked before the first query (labels and targets against the
        model's classes when it has a named head, else as soon as its first pass tells them).

        A text with no word the constraints let change (only stop words, as ``"It is."``, or no word at all,
        as ``"?!"``) is not an error, as in TextAttack: the one pass that classifies it is its only query; the
        model right, it is a failed attack (the prediction stands: robust under attack, a failure in the success
        rate); the model wrong (or a targeted goal already met), skipped. :meth:`check_texts` refuses such texts
        for a caller that wants the user told before attacking.

        Args:
            texts: the texts (a :class:`~mlsafety.core.Texts` or list of str); an empty (or only whitespace) text
                is refused, as the model cannot read it.
            labels: their true labels.
            targets: target classes, required for a targeted goal (ignored otherwise).
        """
        texts = list(texts)
        ys = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
        if len(ys) != len(texts):
            raise InputError(f"{self.name}: {len(texts)} texts but {len(ys)} labels; give one label per text")
        tgts: list[int | None]
        if self.goal.targeted:
            if targets is None:
                raise InputError(f"{self.name}: a targeted goal needs targets=, one class per text")
            tgts = [int(v) for v in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
            if len(tgts) != len(texts):
                raise InputError(f"{self.name}: {len(texts)} texts but {len(tgts)} targets")
            # a target equal to the label is met at once: that text is skipped, as in TextAttack (its summary
            # counts it as classified correctly, from the predictions)
        else:
            tgts = [None] * len(texts)
        k = self.classifier.known_num_classes  # a guessed head is confirmed by the first pass
        check_classes(self.name, "label", ys, k)
        if self.goal.targeted:
            check_classes(self.name, "target", [int(t) for t in tgts if t is not None], k)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"{self.name}: text {i} is a {type(t).__name__}, not a string; pass the texts as str")
            if not t.strip():  # the tokenizer refuses it: no pass can classify it
                raise InputError(f"{self.name}: text {i} is empty; the model cannot read it: remove empty texts")
        attacked = [AttackedText.from_text(t) for t in texts]
        firsts = self._classify(attacked, ys, tgts)
        results = [
            self._attack_one(i, at, y, t, first)
            for i, (at, y, t, first) in enumerate(zip(attacked, ys, tgts, firsts, strict=True))
        ]
        if self.similarity is not None:
            done = [r for r in results if r.status == "succeeded"]
            if done:
                sims = self.similarity([r.original for r in done], [r.perturbed for r in done])
                for r, s in zip(done, sims.tolist()):
                    r.similarity = float(s)
        return results

    __call__ = attack

    def _classify(
        self, texts: Sequence[AttackedText], labels: Sequence[int], targets: Sequence[int | None]
    ) -> list[tuple[torch.Tensor, float, bool]]:
        """Every original's logits, goal score and goal flag, from one pass over all of them in padded batches (the
        model is never asked about one text at a time; each original still counts as one query of its example).

        The goal reads the logits of the whole batch it was just given (an adaptive goal scores its monitor on the
        texts of that batch), once per distinct (label, target); each text keeps its own row."""
        logits = self.queries.logits([t.text for t in texts])
        k = logits.shape[1]  # known from the pass when the head is not named
        check_classes(self.name, "label", labels, k)
        if self.goal.targeted:
            check_classes(self.name, "target", [int(t) for t in targets if t is not None], k)
        groups: dict[tuple[int, int | None], list[int]] = {}
        for i, key in enumerate(zip(labels, targets)):
            groups.setdefault(key, []).append(i)
        out: list[tuple[torch.Tensor, float, bool] | None] = [None] * len(texts)
        for (label, target), rows in groups.items():
            scores = self.goal.score(logits, label, target)
            reached = self.goal.reached(logits, label, target)
            for i in rows:
                out[i] = (logits[i], float(scores[i]), bool(reached[i]))
        return [row for row in out if row is not None]

    def _attack_one(
        self, i: int, original: AttackedText, label: int, target: int | None, first: tuple[torch.Tensor, float, bool]
    ) -> AttackResult:
        g = make_generator(self.seed, "text-attack", self.name, str(i))
        problem = Problem(self, original, label, target, g)
        problem.prime(original.text, first)  # the batched pass of every original (Attack._classify): one query
        start = problem.query([original])  # cached: no further pass
        pred0 = int(start.logits[0].argmax())
        # A misclassified original is skipped under a targeted goal too (TextAttack attacks it): success rate,
        # original accuracy and accuracy under attack then all count over the texts the model got right.
        if bool(start.reached[0]) or pred0 != label:
            return AttackResult(
                original.text, original.text, label, pred0, pred0, (), original.num_words, problem.queries,
                "skipped", target=target, marked=original.text,
            )  # fmt: skip
        if not problem.modifiable(original):  # nothing the search could change: the prediction stands (TextAttack:
            # the search finds no transformation, a failed attack), with the classifying pass as its only query
            return AttackResult(
                original.text, original.text, label, pred0, pred0, (), original.num_words, problem.queries,
                "failed", target=target, marked=original.text,
            )  # fmt: skip
        final = self.search.search(problem, start)
        logits, _, reached, n = problem.score_texts([final.text])  # cached: no extra query
        if n == 0:  # the budget ran out before the final text was scored: it cannot count as a success
            ok, pred = False, pred0
        else:
            ok, pred = bool(reached[0]), int(logits[0].argmax())
        if not ok:
            final = original
            pred = pred0
        return AttackResult(
            original.text, final.text, label, pred0, pred, final.changed, original.num_words, problem.queries,
            "succeeded" if ok else "failed", target=target, marked=final.marked(),
        )  # fmt: skip
