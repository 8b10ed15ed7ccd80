"""answer_states: every layer at the answer's last token and log p(answer), from one pass per batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.alignment import answer_states
from mlsafety.core import InputError, LanguageModel
from tests.support.text import tiny_gpt2, tiny_llama

PROMPTS = ["q: is paris a city ? a:", "the movie was", "i saw a big red dog and it", "is london in england ?"]
ANSWERS = [" yes", " very good", " ran", " no"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_states_and_logprobs_match_the_adapter_and_take_one_pass_per_batch(make, side: str) -> None:
    model = make()
    lm = LanguageModel(model, padding_side=side)
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = answer_states(lm, PROMPTS, ANSWERS, batch_size=3)
    finally:
        handle.remove()
    assert len(calls) == 2  # 4 texts in batches of 3: two forward passes for all layers and the scores
    whole = [p + a for p, a in zip(PROMPTS, ANSWERS)]
    ref = torch.cat([lm.hidden_states([t], positions=-1) for t in whole])  # one text at a time, no padding
    assert got.hidden.shape == (4, lm.n_layers + 1, ref.shape[-1])
    torch.testing.assert_close(got.hidden, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.logprob, lm.logprobs(PROMPTS, ANSWERS, batch_size=1), atol=1e-5, rtol=0)
    assert got.n_answer_tokens.tolist() == [1, 2, 1, 1]


def test_refusals_are_one_line() -> None:
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, 5)

    model = tiny_llama()
    lm = LanguageModel(model)
    with pytest.raises(InputError, match="hidden states"):
        answer_states(LanguageModel(Opaque(), model.tokenizer), ["a"], [" b"])
    with pytest.raises(InputError, match="one answer per prompt"):
        answer_states(lm, ["a", "b"], [" yes"])
    with pytest.raises(InputError, match="empty"):
        answer_states(lm, ["a"], [" "])
