"""The language-model paths on a GPU give the CPU's numbers: hidden states, answer log-probabilities and
the probe tables follow the model's device (each case runs on the CPU too, so the comparison is tested
without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from mlsafety.alignment import answer_states
from mlsafety.alignment.probes import TEMPLATES, run_probes, statement_pairs
from mlsafety.core import LanguageModel
from tests.support.devices import DEVICES
from tests.support.text import tiny_gpt2, tiny_llama

PROMPTS = ["q: is paris a city ? a:", "the movie was", "i saw a big red dog and it", "is london in england ?"]
ANSWERS = [" yes", " very good", " ran", " no"]


def _on(model: torch.nn.Module, device: str) -> torch.nn.Module:
    moved = copy.deepcopy(model).to(device)
    moved.tokenizer = model.tokenizer  # type: ignore[assignment]
    return moved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_answer_states_follow_the_model(make, device: str) -> None:
    model = make()
    ref = answer_states(LanguageModel(model), PROMPTS, ANSWERS, batch_size=3)
    got = answer_states(LanguageModel(_on(model, device)), PROMPTS, ANSWERS, batch_size=3)
    torch.testing.assert_close(got.hidden.cpu(), ref.hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.logprob.cpu(), ref.logprob, atol=1e-4, rtol=0)
    assert got.n_answer_tokens.tolist() == ref.n_answer_tokens.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_probe_tables_on_the_device_equal_the_cpus(device: str) -> None:
    model = tiny_llama()
    pairs = [statement_pairs(24).with_template(t) for t in TEMPLATES["statements"][:2]]
    params = {"ccs": {"epochs": 20, "restarts": 2}}

    def table(m: torch.nn.Module) -> dict[tuple[str, int], float]:
        report = run_probes(LanguageModel(m), pairs, layers=[1, -1], params=params,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        return {(r.method, r.layer): r.accuracy.value for r in report.table()}

    ref = table(model)
    got = table(_on(model, device))
    assert got.keys() == ref.keys()
    # the supervised and closed-form probes read the same states, so they classify the same items
    for key, value in ref.items():
        if key[0] in ("logistic", "mean-diff", "zero-shot"):
            assert got[key] == pytest.approx(value, abs=1 / 12 + 1e-9), key
