"""Text attacks on a GPU give the CPU's answers: the victim, its gradients and the search follow the
model's device (each case runs on the CPU too, so the comparison itself is tested without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from mlsafety.core import Classifier
from mlsafety.robustness.text import Attack, Untargeted
from mlsafety.robustness.text.deepwordbug import DeepWordBug
from mlsafety.robustness.text.hotflip import HotFlip
from mlsafety.robustness.text.textgrad import TextGradSearch
from tests.robustness.text.test_hotflip import _NoRepeat
from tests.robustness.text.test_textgrad import _Keep, _Pool, _positive_texts
from tests.support.devices import DEVICES
from tests.support.linear_text import sentiment, sentiment_model
from tests.support.text import tiny_bert_classifier, tiny_sentences


def _on(model: torch.nn.Module, device: str) -> torch.nn.Module:
    moved = copy.deepcopy(model).to(device)
    moved.tokenizer = model.tokenizer  # type: ignore[assignment]
    return moved


@pytest.mark.parametrize("device", DEVICES)
def test_classifier_logits_follow_the_model(device: str) -> None:
    model = tiny_bert_classifier(seed=1)
    texts, _ = tiny_sentences(12, seed=2)
    cpu = Classifier(model).logits(texts)
    got = Classifier(_on(model, device)).logits(texts)
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_hotflip_finds_the_minimal_flip_on_the_device(device: str) -> None:
    model = _on(sentiment_model(), device)
    (result,) = (
        HotFlip(beam_width=3, top_n=3)
        .build(model, constraints=[_NoRepeat()])
        .attack(["excellent wonderful fine movie"], [1])
    )
    assert result.status == "succeeded" and len(result.changed) == 2
    assert sentiment(result.perturbed) < 0 and result.perturbed_pred == 0


@pytest.mark.parametrize("device", DEVICES)
def test_deepwordbug_gives_the_cpus_results(device: str) -> None:
    texts = ["good movie was fine", "excellent wonderful fine movie", "bad day but a fine film", "i hate it"]
    labels = [1, 1, 0, 0]

    def run(model: torch.nn.Module) -> list:
        attack = DeepWordBug(seed=0).build(model)
        attack.similarity = None  # MiniLM is not installed on every GPU machine; the similarity is not compared here
        return attack.attack(texts, labels)

    ref = run(sentiment_model())
    got = run(_on(sentiment_model(), device))
    assert [(r.status, r.perturbed, r.queries) for r in got] == [(r.status, r.perturbed, r.queries) for r in ref]


@pytest.mark.parametrize("device", DEVICES)
def test_textgrad_on_the_device_flips_what_it_flips_on_the_cpu(device: str) -> None:
    texts = _positive_texts(12)

    def run(model: torch.nn.Module) -> list:
        search = TextGradSearch(Classifier(model), budget_words=2, steps=15, samples=8)
        attack = Attack(model, Untargeted(), _Pool(), [_NoRepeat(), _Keep(2, ("the", "a"))], search, seed=0)
        return attack.attack(texts, [1] * len(texts))

    ref = run(sentiment_model())
    got = run(_on(sentiment_model(), device))
    assert sum(r.success for r in got) >= 0.9 * len(texts)
    assert abs(sum(r.success for r in got) - sum(r.success for r in ref)) <= 1
    for r in got:
        if r.success:
            assert sentiment(r.perturbed) < 0 and len(r.changed) <= 2
