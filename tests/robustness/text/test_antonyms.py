"""The antonym constraint (WordNet's direct and indirect antonymy) and the recipes that use it by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from mlsafety.core import Classifier
from mlsafety.robustness import text as T
from mlsafety.robustness.text import AttackedText
from mlsafety.robustness.text import constraints as C
from mlsafety.zoo._assets import WORDNET_FILES, WORDNET_SOURCE
from tests.support.linear_text import MeanEmbeddingClassifier
from tests.support.text import VOCAB, tiny_tokenizer

HAS_WORDNET = all((WORDNET_SOURCE / f).is_file() for f in WORDNET_FILES)
pytestmark = pytest.mark.skipif(not HAS_WORDNET, reason="Debian's wordnet-base/wordnet-sense-index not installed")

DIRECT = [("dry", "wet"), ("happy", "unhappy"), ("good", "bad"), ("fail", "succeed"), ("love", "hate")]
INFLECTED = [("fails", "succeeds"), ("failed", "succeeded"), ("loved", "hated"), ("better", "worse"), ("Good", "BAD")]
CLUSTER = [("great", "bad"), ("happy", "sad")]  # a satellite of good's cluster; two heads linked by also_see (glad)
SYNONYMS = [("film", "movie"), ("happy", "glad"), ("bad", "awful"), ("good", "great"), ("big", "large"),
            ("terrible", "awful"), ("funny", "amusing"), ("boring", "dull"), ("sad", "unhappy")]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), DIRECT + INFLECTED + CLUSTER)
def test_known_antonyms_are_refused_both_ways(old: str, new: str) -> None:
    assert C.antonymous(old, new) and C.antonymous(new, old)
    text = AttackedText.from_text(f"it was {old} film")
    swapped = text.replace_word(2, new)
    assert C.NoAntonym().allows(text, [swapped, text.replace_word(3, "movie")]) == [False, True]
    assert not C.NoAntonym().check(text, swapped)
    # one antonym among several changed words refuses the text
    assert C.NoAntonym().allows(text, [swapped.replace_word(3, "movie")]) == [False]


@pytest.mark.parametrize(("old", "new"), SYNONYMS)
def test_synonyms_are_accepted(old: str, new: str) -> None:
    assert not C.antonymous(old, new)
    text = AttackedText.from_text(f"it was {old}")
    assert C.NoAntonym().allows(text, [text.replace_word(2, new)]) == [True]


def test_what_it_does_not_catch() -> None:
    """Sentiment flips WordNet does not list as antonyms pass (documented); a word WordNet lacks opposes nothing."""
    for old, new in [("bored", "fun"), ("pointless", "hilarious"), ("mistake", "correct")]:
        assert not C.antonymous(old, new)
    assert not C.antonymous("xqzzy", "good") and not C.antonymous("good", "good")


class _Cos1:
    """Sentence encoder stand-in (the texts here are shorter than the similarity window, so it is not read)."""

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        return torch.ones(len(a))


def antonym_model() -> Any:
    """Class 1 iff mean sentiment (embedding coordinate 0) + 0.1 > 0: ``good`` 1, ``great`` 2, ``bad`` -3, every
    other word (and [UNK]) 0. ``good``'s only neighbours with cosine >= 0.8 are ``great`` and ``bad`` (coordinate 1
    is theirs alone), so in "it was good" the only swap that flips the label is the antonym ``bad``."""
    model = MeanEmbeddingClassifier(len(VOCAB), 4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.embed.weight
        w.zero_()
        w[:, 2:] = torch.randn(len(VOCAB), 2, generator=g)
        for word, (s, c) in {"good": (1.0, 6.0), "great": (2.0, 6.0), "bad": (-3.0, 6.0)}.items():
            w[VOCAB.index(word)] = torch.tensor([s, c, 0.0, 0.0])
        for special in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
            w[VOCAB.index(special)] = 0.0
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0] = 1.0
        model.fc.bias[1] = 0.1
    model.tokenizer = tiny_tokenizer("cls")
    return model.eval()


RECIPES: dict[str, dict[str, Any]] = {
    "textfooler": {"embeddings": "victim"},
    "textgrad": {"fluency": "none", "max_candidates": 200},  # good's WordNet synonyms come first: take them all
    "hotflip": {},
    "a2t": {},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_no_longer_returns_the_antonym_flip(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the constraint every recipe 'won' by turning "good" into "bad" (a label change, not an adversarial
    example); now none does, and ``refuse_antonyms=False`` gives the old recipe back for comparison."""
    from mlsafety.robustness.text import _resources, textfooler

    monkeypatch.setattr(_resources, "minilm_encoder", _Cos1)
    monkeypatch.setattr(textfooler, "minilm_encoder", _Cos1)
    model = antonym_model()
    vectors = T.WordVectors.from_classifier(Classifier(model))
    assert {w for w, c in zip(*vectors.neighbours("good", 50)) if c >= 0.8} == {"great", "bad"}

    old = T.create(name, model, query_budget=200, refuse_antonyms=False, **RECIPES[name])
    (r,) = old.attack(["it was good"], [1])
    assert r.status == "succeeded" and r.perturbed == "it was bad"

    new = T.create(name, model, query_budget=200, **RECIPES[name])
    assert any(isinstance(c, C.NoAntonym) for c in new.constraints)
    (r,) = new.attack(["it was good"], [1])
    assert r.status == "failed" and "bad" not in r.perturbed.split()
