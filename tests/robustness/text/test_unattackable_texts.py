"""Texts an attack cannot change (only stop words, no word at all) among ordinary ones: a failed attack
(or skipped), as TextAttack reports them, never a refusal of the whole call.

The victim is the known-rule sentiment model with a bias of 0.1 on class 1: the class-1 logit is the mean
sentiment of the tokens ([CLS] and [SEP] count, sentiment 0) plus 0.1, class 0's is 0, so a text without a
sentiment word is class 1, away from the tie.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.robustness import text as T
from mlsafety.robustness.text import Attack, Targeted, Untargeted, evaluate_text_attack
from mlsafety.robustness.text import constraints as C
from mlsafety.robustness.text import search as S
from mlsafety.robustness.text.hotflip import HotFlip
from tests.robustness.text.test_text_blocks import HAS_WORDNET
from tests.robustness.text.test_text_search import ListSwap
from tests.support.linear_text import sentiment_model

TEXTS = ["the movie was bad", "It is.", "?!", "It is.", "the movie was good"]
LABELS = [0, 1, 1, 0, 1]
"""0: sentiment -1 over 6 tokens, -1/6 + 0.1 < 0: class 0, right. 1: only stop words (it, is), class 1, right:
nothing to change, a failed attack. 2: no word at all, read as [UNK], class 1, right: failed. 3: as 1 but
labelled 0: the model is wrong, skipped. 4: sentiment +1: class 1, right."""
UNATTACKABLE = {1: "failed", 2: "failed", 3: "skipped"}


def biased_model() -> Any:
    model = sentiment_model()
    with torch.no_grad():
        model.fc.bias[1] = 0.1
    return model


def check_summary(results: list[T.AttackResult], succeeded: int) -> None:
    """The summary's figures from the statuses, counted by hand: 5 texts, 1 skipped, so 4 attacked; the model
    right on 4; under attack it holds on the unattackable texts it got right (1, 2) and the attacked texts
    the attack failed on."""
    s = evaluate_text_attack(results)
    assert (s.n, s.attacked, s.succeeded) == (5, 4, succeeded)
    assert s.original_accuracy.value == pytest.approx(4 / 5)
    assert s.success_rate is not None and s.success_rate.value == pytest.approx(succeeded / 4)
    assert s.accuracy_under_attack.value == pytest.approx((4 - succeeded) / 5)
    assert s.queries is not None
    assert s.queries.value == pytest.approx((results[0].queries + 1 + 1 + results[4].queries) / 4)


def check_unattackable(results: list[T.AttackResult]) -> None:
    for i, status in UNATTACKABLE.items():
        r = results[i]
        assert r.status == status, (i, r)
        assert r.queries == 1  # the pass that classified it, nothing more
        assert r.perturbed == r.original == TEXTS[i] and r.marked == TEXTS[i] and r.changed == ()
        assert r.original_pred == r.perturbed_pred == 1


def test_deepwordbug_reports_unattackable_texts_as_failed_or_skipped() -> None:
    attack = T.create("deepwordbug", biased_model(), query_budget=60)
    results = attack.attack(TEXTS, LABELS)
    check_unattackable(results)
    # any character edit of "bad" or "good" is outside the tiny vocabulary: [UNK], sentiment 0, class 1, so
    # text 0 flips and text 4 cannot
    assert [r.status for r in results] == ["succeeded", "failed", "failed", "skipped", "failed"]
    assert results[0].perturbed_pred == 1 and results[4].perturbed_pred == 1
    assert attack.queries.texts == sum(r.queries for r in results)  # no text was read beyond what is counted
    check_summary(results, succeeded=1)


def test_hotflip_reports_unattackable_texts_as_failed_or_skipped() -> None:
    constraints = [C.RepeatModification(), C.StopWords(), C.MaxWordsPerturbed(max_words=2)]
    attack = HotFlip(beam_width=3, top_n=5).build(biased_model(), constraints=constraints)
    results = attack.attack(TEXTS, LABELS)
    check_unattackable(results)
    # one swap of the sentiment word to a word of the other sign flips texts 0 and 4 (|sentiment| >= 1 over 6
    # tokens outweighs the 0.1 bias)
    assert [r.status for r in results] == ["succeeded", "failed", "failed", "skipped", "succeeded"]
    assert results[0].perturbed_pred == 1 and results[4].perturbed_pred == 0
    check_summary(results, succeeded=2)


def test_beam_and_greedy_searches_take_the_mix() -> None:
    for search in (S.BeamSearch(2), S.GreedyWordImportance("delete"), S.GreedyWordImportance("unk")):
        constraints = [C.RepeatModification(), C.StopWords()]
        attack = Attack(biased_model(), Untargeted(), ListSwap(["awful", "great"]), constraints, search, 50)
        results = attack.attack(TEXTS, LABELS)
        check_unattackable(results)
        # "bad" -> "great" flips text 0, "good" -> "awful" text 4
        assert [r.status for r in results] == ["succeeded", "failed", "failed", "skipped", "succeeded"], search
        assert attack.queries.texts == sum(r.queries for r in results)
        check_summary(results, succeeded=2)


NEEDS_WORDNET = ("pwws", "textfooler", "textgrad", "a2t", "hotflip")


@pytest.mark.parametrize("name", ["deepwordbug", "pwws", "textfooler", "hotflip", "textgrad", "a2t"])
def test_every_recipe_takes_the_mix(name: str) -> None:
    if name in NEEDS_WORDNET and not HAS_WORDNET:
        pytest.skip("Debian's wordnet-base/wordnet-sense-index not installed")
    extra: dict[str, Any] = {"textfooler": {"embeddings": "minilm"}, "textgrad": {"fluency": "none"}}.get(name, {})
    attack = T.create(name, biased_model(), query_budget=60, **extra)
    results = attack.attack(TEXTS, LABELS)
    check_unattackable(results)
    assert results[0].status != "skipped" and results[4].status != "skipped"
    check_summary(results, succeeded=sum(r.success for r in results))


def test_targeted_goal_on_an_unattackable_text() -> None:
    attack = Attack(biased_model(), Targeted(), ListSwap(["awful"]), [C.StopWords()], S.BeamSearch(2))
    # "It is." is class 1 (right): towards class 0 it cannot move (failed); towards its own class it is there
    # already (skipped)
    results = attack.attack(["It is.", "It is."], [1, 1], targets=[0, 1])
    assert [(r.status, r.queries, r.perturbed_pred) for r in results] == [("failed", 1, 1), ("skipped", 1, 1)]


def test_empty_and_non_string_texts_are_still_one_line_and_check_texts_still_refuses() -> None:
    attack = Attack(biased_model(), Untargeted(), ListSwap(["awful"]), [C.StopWords()], S.BeamSearch())
    with pytest.raises(InputError, match=r"text 1 is empty") as e:
        attack.attack(["the movie was good", "   "], [1, 1])  # the tokenizer cannot read it: nothing to classify
    assert "\n" not in str(e.value)
    assert attack.queries.texts == 0  # refused before the first query
    with pytest.raises(InputError, match=r"text 0 is a int, not a string"):
        attack.attack([3], [1])  # type: ignore[list-item]
    # the attack-text command calls check_texts first, to tell the user in one line
    with pytest.raises(InputError, match="only stop words"):
        attack.check_texts(["the movie was good", "It is."])
    with pytest.raises(InputError, match="empty"):
        attack.check_texts(["   "])
