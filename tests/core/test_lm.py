"""LanguageModel: padding and batching never change a score, hidden states, generation, hooks, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, LanguageModel, Progress, UnknownNameError
from tests.support.text import VOCAB, tiny_bert_classifier, tiny_gpt2, tiny_llama

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
PROMPTS = ["the capital of france is", "a good movie", "i saw a big red dog and it", "q: is paris a city ? a:"]
CONTS = [" paris", " was very bad", " ran", " yes"]


def _unpadded_logprob(model: Any, prompt: str, cont: str) -> torch.Tensor:
    """Brute force: one text, no padding, no attention mask, log-softmax over the whole vocabulary."""
    tok = model.tokenizer
    p_ids = tok(prompt)["input_ids"]
    ids = torch.tensor([tok(prompt + cont)["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.log_softmax(-1)[0]
    return sum(logp[t - 1, ids[0, t]] for t in range(len(p_ids), ids.shape[1]))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_padding_and_batching_never_change_a_score(family: str, side: str) -> None:
    model = MODELS[family]()
    lm = LanguageModel(model, model.tokenizer, padding_side=side)
    batched = lm.logprobs(PROMPTS, CONTS, batch_size=3)
    one_by_one = torch.stack([_unpadded_logprob(model, p, c) for p, c in zip(PROMPTS, CONTS)])
    torch.testing.assert_close(batched, one_by_one.float(), rtol=0, atol=1e-5)
    parts = lm.token_logprobs(PROMPTS, CONTS, batch_size=4)
    assert [len(p) for p in parts] == [1, 3, 1, 1]
    torch.testing.assert_close(torch.stack([p.sum() for p in parts]), batched, rtol=0, atol=1e-5)


def test_position_ids_matter_under_left_padding() -> None:
    """Without position ids counted over real tokens, GPT-2's absolute positions would shift: the test sees it."""
    model = tiny_gpt2()
    batch = model.tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        naive = model(**batch).logits[:, -1]
        alone = model(**model.tokenizer(PROMPTS[1:2], return_tensors="pt")).logits[:, -1]
    assert not torch.allclose(naive[1], alone[0], atol=1e-3)  # the naive batch is off ...
    lm = LanguageModel(model, padding_side="left")
    torch.testing.assert_close(
        lm.logprobs(PROMPTS, CONTS), lm.logprobs(PROMPTS, CONTS, batch_size=1), atol=1e-5, rtol=0
    )


def test_continuation_tokens_are_those_scored_and_trailing_space_moves() -> None:
    model = tiny_llama()
    lm = LanguageModel(model)
    parts = lm.token_logprobs(["the capital of france is"], [" paris"])
    assert parts[0].shape == (1,)  # " paris" is one token: "paris"
    ids = torch.tensor([model.tokenizer("the capital of france is")["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -1].log_softmax(-1)
    torch.testing.assert_close(parts[0][0], logp[VOCAB.index("paris")], atol=1e-6, rtol=0)
    moved = lm.logprobs(["the capital of france is "], ["paris"])
    torch.testing.assert_close(moved, lm.logprobs(["the capital of france is"], [" paris"]), atol=0, rtol=0)


def test_a_module_returning_plain_logits_works() -> None:
    model = tiny_gpt2()

    class Bare(nn.Module):  # takes input_ids only, returns a tensor
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids).logits

    lm = LanguageModel(Bare(), model.tokenizer, padding_side="left")
    assert lm.padding_side == "right"  # no mask: padding goes where a causal model cannot see it
    expected = torch.stack([_unpadded_logprob(model, p, c) for p, c in zip(PROMPTS, CONTS)]).float()
    torch.testing.assert_close(lm.logprobs(PROMPTS, CONTS), expected, atol=1e-5, rtol=0)
    full = LanguageModel(model)
    assert lm.generate(PROMPTS[:2], max_new_tokens=4) == full.generate(PROMPTS[:2], max_new_tokens=4)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_hidden_states_are_the_residual_stream_at_real_positions(family: str) -> None:
    model = MODELS[family]()
    lm = LanguageModel(model, padding_side="left")
    states = lm.hidden_states(PROMPTS, batch_size=3)
    assert states.shape == (4, 3, 32)
    for i, text in enumerate(PROMPTS):
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(states[i, 0], hidden[0][0, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(states[i, 1], hidden[1][0, -1], atol=1e-5, rtol=0)
    logits, cache = lm.run_with_cache(PROMPTS, [f"blocks.{i}.resid_post" for i in range(2)])
    batch = lm.encode(PROMPTS)
    assert logits.shape == (*batch.shape, len(VOCAB))
    for i in range(2):  # resid_post of block i is hidden_states[i + 1]
        torch.testing.assert_close(states[:, i + 1], cache[f"blocks.{i}.resid_post"][:, -1], atol=1e-5, rtol=0)
    some = lm.hidden_states(PROMPTS, layers=[-1, 0], positions=[0, -2], batch_size=2)
    assert some.shape == (4, 2, 2, 32)
    torch.testing.assert_close(some[:, 0, 1], lm.hidden_states(PROMPTS, positions=-2)[:, 2], atol=1e-5, rtol=0)
    right = LanguageModel(model, padding_side="right").hidden_states(PROMPTS, layers=[-1, 0], positions=[0, -2])
    torch.testing.assert_close(some, right, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="position 9 is outside text 0, which has 6 tokens"):
        lm.hidden_states(PROMPTS, positions=9)
    with pytest.raises(InputError, match="layer 3 is out of range"):
        lm.hidden_states(PROMPTS, layers=[3])


@pytest.mark.parametrize("family", sorted(MODELS))
def test_greedy_generation_batched_equals_one_by_one_and_transformers(family: str) -> None:
    model = MODELS[family]()
    lm = LanguageModel(model)
    batched = lm.generate(PROMPTS, max_new_tokens=6, batch_size=3)
    assert batched == [lm.generate([p], max_new_tokens=6)[0] for p in PROMPTS]
    tok = model.tokenizer
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    new = ref[0, ids.shape[1] :].tolist()
    new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    assert batched[0] == tok.decode(new, skip_special_tokens=True)


def test_sampling_is_reproducible_with_our_generator() -> None:
    lm = LanguageModel(tiny_llama())

    def sample(seed: int, **kw: Any) -> list[str]:
        return lm.generate(
            PROMPTS, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw
        )

    torch.manual_seed(123)
    first = sample(0)
    torch.manual_seed(456)  # the global generator plays no part
    assert sample(0) == first
    assert sample(1) != first
    top1 = lm.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(5))
    assert top1 == lm.generate(PROMPTS, max_new_tokens=8)  # top-1 sampling is greedy


def test_generation_stops_at_end_of_sequence() -> None:
    model = tiny_llama()
    eos = model.tokenizer.eos_token_id
    favourite = VOCAB.index("good")

    class Scripted(nn.Module):  # says "good" until position 5 is filled, then EOS
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> Any:
            logits = torch.zeros(*input_ids.shape, len(VOCAB))
            logits[..., favourite] = 1.0
            logits[..., eos] = (position_ids >= 5).float() * 2
            return {"logits": logits}

    lm = LanguageModel(Scripted(), model.tokenizer)
    assert lm.generate(["a b c", "a"], max_new_tokens=10) == ["good good", "good good good good"]


def test_modes_and_flags_restored_also_after_errors() -> None:
    model = tiny_gpt2().train()
    model.transformer.wte.weight.requires_grad_(False)
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lm = LanguageModel(model)
    lm.logprobs(PROMPTS, CONTS, progress=Progress(enabled=False))
    lm.hidden_states(PROMPTS)
    lm.generate(PROMPTS, max_new_tokens=3)
    lm.run_with_cache(PROMPTS, ["embed"])
    with pytest.raises(InputError):
        lm.hidden_states(PROMPTS, positions=50)
    after = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    assert before == after
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_through_the_adapter() -> None:
    lm = LanguageModel(tiny_llama())
    assert lm.hook_points()[0] == "embed" and "blocks.1.head_out" in lm.hook_points()
    plain = lm.logprobs(PROMPTS, CONTS)
    with lm.hooks({"blocks.0.resid_post": lambda act, name: None}):
        assert torch.equal(lm.logprobs(PROMPTS, CONTS), plain)
    with lm.hooks({"blocks.1.mlp_out": lambda act, name: torch.zeros_like(act)}):
        assert not torch.allclose(lm.logprobs(PROMPTS, CONTS), plain)
    assert torch.equal(lm.logprobs(PROMPTS, CONTS), plain)
    with pytest.raises(UnknownNameError, match=r"unknown hook point 'blocks\.7\.attn_out'"):
        lm.run_with_cache(PROMPTS, ["blocks.7.attn_out"])


def test_bad_input_is_one_line() -> None:
    model = tiny_llama()
    lm = LanguageModel(model)
    short = LanguageModel(model, max_length=4)
    cases: list[tuple[Any, str]] = [
        (lambda: lm.logprobs([], []), "no prompts"),
        (lambda: lm.logprobs(["a"], ["b", "c"]), "1 prompts but 2 continuations"),
        (lambda: lm.logprobs([""], [" b"]), "prompts 0 is empty"),
        (lambda: lm.logprobs(["a good"], [""]), "continuations 0 is empty"),
        (lambda: lm.logprobs(["  "], [" b"]), "only whitespace"),
        (lambda: lm.logprobs("a good", " film"), "one string"),
        (lambda: lm.logprobs(["the capital of fra"], ["nce"]), "not followed by continuation tokens"),
        (lambda: short.logprobs(["a", "a b c"], [" b", " d e"]), "continuation 1 is longer"),
        (lambda: lm.hidden_states([]), "no texts"),
        (lambda: lm.generate(["a"], temperature=0.5), "needs generator="),
        (lambda: lm.generate(["a"], max_new_tokens=0), "max_new_tokens"),
        (lambda: lm.generate(["a"], max_new_tokens=200), "over the model's 128 positions"),
        (lambda: lm.generate(["a"], top_k=0), "top_k"),
        (lambda: LanguageModel(nn.Linear(2, 2)), "needs its tokenizer"),
        (lambda: LanguageModel(tiny_bert_classifier()).run_with_cache(["a"], []), r"must return logits \(N, L, V\)"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as err:
            call()
        assert "\n" not in str(err.value), message


def test_max_length_defaults_to_the_models_positions_when_the_tokenizer_states_no_limit() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.text import tiny_tokenizer

    tok = tiny_tokenizer("bos", max_length=int(1e30))  # like SmolLM2's: no stated limit
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        attn_implementation="eager",
    )
    lm = LanguageModel(LlamaForCausalLM(config).eval(), tok)
    assert lm.max_length == 8
    assert lm.logprobs(["the cat"], [" sat"]).shape == (1,)
    with pytest.raises(InputError, match="longer than max_length=8 tokens") as info:
        lm.logprobs(["the cat sat on the mat with a dog and"], [" ran"])
    assert "\n" not in str(info.value)
    assert LanguageModel(tiny_llama(), max_length=5).max_length == 5
    assert LanguageModel(tiny_llama()).max_length == 64  # the tokenizer's limit, under the model's 128 positions
