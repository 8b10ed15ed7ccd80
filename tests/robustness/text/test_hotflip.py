"""HotFlip: the first-order swap estimate and the beam search, on a model with a known linear rule."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, InputError
from mlsafety.robustness.text import AttackedText, Constraint
from mlsafety.robustness.text.hotflip import GradientWordSwap, HotFlip
from tests.support.linear_text import sentiment, sentiment_model


class _NoRepeat(Constraint):
    """Each word changes at most once (the repeated-modification rule, written out for the test)."""

    def modifiable(self, text: AttackedText, indices: set[int]) -> set[int]:
        return indices - set(text.modified)


class _MaxWords(Constraint):
    def __init__(self, k: int) -> None:
        self.k = k

    def allows(self, original: AttackedText, candidates: list[AttackedText]) -> list[bool]:  # type: ignore[override]
        return [len(c.changed) <= self.k for c in candidates]


def _loss(model: torch.nn.Module, texts: list[str], label: int) -> torch.Tensor:
    with torch.no_grad():
        logits = Classifier(model).logits(texts)
    return F.cross_entropy(logits, torch.full((len(texts),), label), reduction="none")


def test_first_order_estimate_ranks_swaps_as_the_model_does() -> None:
    model = sentiment_model()
    text = AttackedText.from_text("good movie was fine")
    swap = GradientWordSwap(model, top_n=10_000)
    rows = swap.ranked([text], [list(range(text.num_words))], [1])[0]
    assert rows, "no swap proposed"
    texts = [text.replace_word(i, w).text for _, i, w in rows]
    true = _loss(model, texts, 1)
    est = torch.tensor([s for s, _, _ in rows])
    # the estimate's best swap is the truly best one (good/fine -> the most negative word)
    assert int(est.argmax()) == int(true.argmax())
    assert texts[int(est.argmax())] == "good movie was worse"
    # and the two orders agree on every pair whose estimates differ (exact for a linear rule)
    order = est.argsort(descending=True)
    diffs = est[order][:-1] - est[order][1:]
    step = true[order][:-1] - true[order][1:]
    assert bool((step[diffs > 1e-4] > -1e-5).all())


def test_hotflip_finds_the_minimal_flip() -> None:
    model = sentiment_model()
    text = "excellent wonderful fine movie"
    words = text.split()
    vocab = GradientWordSwap(model).vocabulary[1]
    singles = [" ".join([*words[:i], w, *words[i + 1 :]]) for i in range(len(words)) for w in vocab]
    assert min(sentiment(t) for t in singles) > 0  # no single swap flips it: the minimal flip needs two
    attack = HotFlip(beam_width=3, top_n=3).build(model, constraints=[_NoRepeat()])
    (result,) = attack.attack([text], [1])
    assert result.status == "succeeded"
    assert len(result.changed) == 2
    assert sentiment(result.perturbed) < 0 and result.perturbed_pred == 0
    assert "[[" in result.marked


def test_constraints_hold_and_budget_is_kept() -> None:
    model = sentiment_model()
    texts = ["excellent wonderful fine movie", "good movie was fine", "bad day but a fine film"]
    attack = HotFlip(beam_width=2, top_n=2, query_budget=15).build(model, constraints=[_NoRepeat(), _MaxWords(1)])
    results = attack.attack(texts, [1, 1, 0])
    for r in results:
        assert len(r.changed) <= 1
        assert r.queries <= 15
        if r.status == "succeeded":
            assert (sentiment(r.perturbed) > 0) != (r.label == 1)
    assert results[0].status == "failed" and results[0].perturbed == texts[0]  # needs two words
    assert results[1].status == "succeeded"


def test_model_left_as_it_was() -> None:
    model = sentiment_model()
    model.train()
    model.fc.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    HotFlip().build(model, constraints=[_NoRepeat()]).attack(["good movie was fine"], [1])
    assert model.training and not model.fc.weight.requires_grad and model.embed.weight.requires_grad
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p)


def test_brute_force_agrees_on_two_word_flips() -> None:
    """The beam finds the strongest two-word flip found by enumeration (for a linear rule greedy is optimal)."""
    model = sentiment_model()
    text = "excellent wonderful fine movie"
    words = text.split()
    vocab = GradientWordSwap(model).vocabulary[1]
    best = min(
        sentiment(" ".join([*words[:i], a, *words[i + 1 : j], b, *words[j + 1 :]]))
        for i, j in itertools.combinations(range(len(words)), 2)
        for a in vocab
        for b in vocab
    )
    attack = HotFlip(beam_width=1, top_n=1).build(model, constraints=[_NoRepeat()])
    (result,) = attack.attack([text], [1])
    assert sentiment(result.perturbed) == pytest.approx(best)


def test_text_model_required() -> None:
    with pytest.raises(InputError, match="text classifier"):
        HotFlip().build(torch.nn.Linear(3, 2), constraints=[])
