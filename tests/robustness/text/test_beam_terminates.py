"""Every search ends, even when a step's candidates were all scored before (and so cost no query).

Without a :class:`~mlsafety.robustness.text.constraints.RepeatModification` constraint a search can come back to
texts it has already scored; the cache answers those for free, so a query budget alone never stops a search that
only meets such texts, and without a budget nothing does. The attacks here run with a transformation that counts
its calls and gives up after far more than any ending search needs, in a thread joined with a timeout, so a search
that loops fails the test instead of hanging the suite.

The victim (``tests.support.linear_text.sentiment_model``) predicts class 1 exactly when the summed sentiment of the
text's words is positive; "the movie was bad" (sentiment -1) is class 0, and swaps to "bad" (-1) or "awful" (-1.25)
only make a text more negative, so the untargeted attack on it (label 0) can never succeed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from mlsafety.core import Classifier
from mlsafety.robustness.text import Attack, AttackedText, AttackResult, Transformation, Untargeted
from mlsafety.robustness.text import constraints as C
from mlsafety.robustness.text import search as S
from mlsafety.robustness.text.textgrad import RandomSubstitutionSearch, TextGradSearch
from tests.support.linear_text import sentiment, sentiment_model

TEXT = "the movie was bad"
SWAPS = ["bad", "awful"]
MAX_CALLS = 5_000
"""Replacement lists asked for before the transformation gives up: an ending search on these texts asks for a few
dozen (a beam step asks for one per beam text and modifiable word)."""
TIMEOUT_S = 60.0


class Looping(RuntimeError):
    """The search asked for more replacements than an ending search can."""


class CountedSwap(Transformation):
    """Every word may become any word of ``table[word]`` (``words`` for every word when ``table`` is None); raises
    :class:`Looping` after :data:`MAX_CALLS` calls."""

    def __init__(self, words: list[str], table: dict[str, list[str]] | None = None) -> None:
        self.words, self.table = words, table
        self.calls = 0

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise Looping(f"{self.calls} replacement lists asked for: the search does not end")
        return list(self.words) if self.table is None else list(self.table.get(text.words[index], []))


def finished(run: Callable[[], list[AttackResult]]) -> list[AttackResult]:
    """``run()``'s results; fails the test when it loops (:class:`Looping`) or outlasts :data:`TIMEOUT_S`."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["results"] = run()
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"the attack did not end within {TIMEOUT_S:.0f}s")
    if isinstance(box.get("error"), Looping):
        pytest.fail(f"the attack does not end: {box['error']}")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["results"]  # type: ignore[return-value]


# Reachable texts: "movie" may become bad/awful and back is not offered, so word 1 takes 3 values (movie, bad,
# awful) and word 3 two (bad, awful); "the" and "was" are stop words. 3 x 2 = 6 texts, the original among them,
# each scored once at most.
REACHABLE = 3 * 2


@pytest.mark.parametrize("budget", [100, None])
@pytest.mark.parametrize("width", [1, 2, 8])
def test_beam_search_ends_when_a_step_finds_nothing_new(width: int, budget: int | None) -> None:
    """The reported case: without RepeatModification the beam soon meets only scored texts; it stops there and
    reports a failed attack with what it spent (every reachable text, once). Width 1 is the beam that swings
    between two texts (the original and "the movie was awful"), not one that stands still."""
    assert sentiment(TEXT) < 0 and sentiment("the movie was awful") < 0
    swap = CountedSwap(SWAPS)
    attack = Attack(sentiment_model(), Untargeted(), swap, [C.StopWords()], S.BeamSearch(width), query_budget=budget)
    (res,) = finished(lambda: attack.attack([TEXT], [0]))
    assert res.status == "failed" and res.perturbed == TEXT and res.perturbed_pred == 0
    assert res.queries == REACHABLE
    assert attack.queries.texts == REACHABLE  # what the model read is what the result counts


def test_a_step_of_scored_texts_does_not_end_the_beam_while_it_moves_on() -> None:
    """A transformation whose replacements depend on the current word: the step from "good" offers only texts
    scored before ("excellent", the original, and "great"), but the beam moves to "great", whose replacements
    include the new "bad", which flips the text. Stopping at the first step with nothing new would miss it.

    Width 1, label 1, score 1 - p(1) (higher for a less positive text): step 1 scores good (1.0) and great (1.25)
    and keeps good; step 2 offers excellent (2.0, the original) and great, both scored, and keeps great; step 3
    scores bad (-1), which succeeds: 1 + 2 + 1 = 4 queries."""
    table = {"excellent": ["good", "great"], "good": ["excellent", "great"], "great": ["excellent", "good", "bad"]}
    swap = CountedSwap([], table)
    attack = Attack(sentiment_model(), Untargeted(), swap, [], S.BeamSearch(1))
    (res,) = finished(lambda: attack.attack(["excellent"], [1]))
    assert res.status == "succeeded" and res.perturbed == "bad" and res.perturbed_pred == 0
    assert res.queries == 4


def _searches() -> list[tuple[str, S.SearchMethod]]:
    clf = Classifier(sentiment_model())
    return [
        ("delete", S.GreedyWordImportance("delete")),
        ("unk", S.GreedyWordImportance("unk")),
        ("pwws", S.GreedyWordImportance("pwws")),
        ("random", S.GreedyWordImportance("random")),
        ("textgrad", TextGradSearch(clf, budget_words=2, steps=3, samples=4)),
        ("random-substitution", RandomSubstitutionSearch(clf, budget_words=2, samples=4)),
    ]


@pytest.mark.parametrize("budget", [100, None])
@pytest.mark.parametrize("which", [name for name, _ in _searches()])
def test_every_other_search_ends_on_the_same_text(which: str, budget: int | None) -> None:
    """The greedy orders, TextGrad and random substitution on the same unreachable goal: each ends, failed."""
    search = dict(_searches())[which]
    model = search.clf.module if isinstance(search, TextGradSearch) else sentiment_model()
    attack = Attack(model, Untargeted(), CountedSwap(SWAPS), [C.StopWords()], search, query_budget=budget)
    (res,) = finished(lambda: attack.attack([TEXT], [0]))
    assert res.status == "failed" and res.perturbed == TEXT and res.perturbed_pred == 0
    assert res.queries <= (budget or 10**9)


class FreshWords(CountedSwap):
    """Every call offers words never offered before: each beam step scores only new texts."""

    def __init__(self) -> None:
        super().__init__([])

    def replacements(self, text: AttackedText, index: int, g: torch.Generator | None = None) -> list[str]:
        super().replacements(text, index, g)
        return [f"zq{self.calls}x{i}" for i in range(2)]  # unknown to the victim: sentiment 0, class 0 kept


@pytest.mark.parametrize("max_steps", [None, 3])
def test_beam_search_ends_when_every_step_offers_new_texts(max_steps: int | None) -> None:
    """No RepeatModification, no budget, and a transformation that always offers new words (as random character
    insertions do): the cache never answers a whole step, so only a bound on the steps ends the search."""
    swap = FreshWords()
    search = S.BeamSearch(2, max_steps=max_steps)
    attack = Attack(sentiment_model(), Untargeted(), swap, [C.StopWords()], search)
    (res,) = finished(lambda: attack.attack([TEXT], [0]))
    assert res.status == "failed" and res.perturbed_pred == 0
    steps = 4 * 4 if max_steps is None else max_steps  # four per word of "the movie was bad"
    # the original's own query, then each step expands each beam text at its two modifiable words, two new words
    # each: 2 x 2 x 2 texts (one beam text on the first step)
    assert res.queries == 1 + 4 + (steps - 1) * 8


def test_beam_max_steps_is_checked() -> None:
    from mlsafety.core import InputError

    with pytest.raises(InputError, match="max_steps must be >= 1"):
        S.BeamSearch(2, max_steps=0)
