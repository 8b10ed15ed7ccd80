"""LanguageModel on the embedded SmolLM2-135M-Instruct (4-bit weights dequantised to fp32): known answers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlsafety.core import LanguageModel
from mlsafety.zoo import load_model


@pytest.fixture(scope="module")
def smollm2() -> Any:
    model = load_model("smollm2-135m")  # from the .safetensors cache (made from the pinned GGUF once)
    return model, model.tokenizer


@pytest.mark.slow
def test_smollm2_paris_padding_hooks_and_generation(smollm2: Any) -> None:
    model, tokenizer = smollm2
    prompts = ["The capital of France is"] * 2 + ["Water boils at a temperature of 100 degrees", "Hello, my name is"]
    conts = [" Paris", " Rome", " Celsius", " John"]
    scores = {}
    for side in ("left", "right"):
        lm = LanguageModel(model, tokenizer, padding_side=side)
        scores[side] = lm.logprobs(prompts, conts, batch_size=4)
    alone = []
    for prompt, cont in zip(prompts, conts):  # unbatched, unpadded, no mask: the reference
        ids = torch.tensor([tokenizer(prompt + cont)["input_ids"]])
        n_prompt = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        alone.append(sum(logp[t - 1, ids[0, t]] for t in range(n_prompt, ids.shape[1])))
    reference = torch.stack(alone).float()
    for side in ("left", "right"):
        torch.testing.assert_close(scores[side], reference, rtol=0, atol=1e-5)
    assert abs(float(scores["left"][0]) - (-0.26)) < 0.01
    assert abs(float(scores["left"][1]) - (-7.57)) < 0.01

    lm = LanguageModel(model, tokenizer)
    assert lm.points.family == "llama" and lm.n_layers == 30 and lm.points.n_heads == 9
    states = lm.hidden_states(prompts[:1], layers=[0, 30])
    assert states.shape == (1, 2, 576)
    assert lm.generate(["The capital of France is"], max_new_tokens=2) == [" Paris."]
    pair = ["The capital of France is", "Hello"]  # left-padded batch = one by one
    assert lm.generate(pair, max_new_tokens=6) == [lm.generate([p], max_new_tokens=6)[0] for p in pair]
    batch = lm.encode(prompts)
    with torch.no_grad():
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    hooked, cache = lm.run_with_cache(batch, ["blocks.29.resid_post", "final_norm"])
    assert torch.equal(hooked, plain)  # hooks that only read change nothing
    scale = float(states.abs().max())  # the last residual stream is large: compare relative to it
    last = cache["blocks.29.resid_post"][:1, batch.lengths[0] - 1]
    torch.testing.assert_close(states[:, 1], last, rtol=0, atol=1e-5 * scale)
