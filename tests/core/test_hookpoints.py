"""Hook points: names resolve on Llama / GPT-2 / BERT, reading is exact, replacing works, hooks always go."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mlsafety.core import HookPoints, HookTable, InputError, UnknownNameError
from tests.support.text import tiny_bert_classifier, tiny_gpt2, tiny_llama

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert_classifier}
CAUSAL = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def _inputs(model: Any) -> dict[str, torch.Tensor]:
    batch = model.tokenizer(["the cat sat on the mat", "a good film"], padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_name_resolves_and_fires_once_with_its_shape(family: str) -> None:
    model = MODELS[family]()
    points = HookPoints(model)
    assert points.family == family and points.n_layers == 2
    names = points.names()
    assert len(names) == 1 + 5 * 2 + (family != "bert")
    modules = dict(model.named_modules())
    seen: dict[str, list[tuple[int, ...]]] = {}
    with points.hooks(dict.fromkeys(names, lambda act, name: seen.setdefault(name, []).append(tuple(act.shape)))):
        model(**_inputs(model))
    n, length = _inputs(model)["input_ids"].shape
    for name in names:
        assert points.module_name(name) in modules
        assert len(seen[name]) == 1, name
        want = (n, length, points.n_heads, points.d_head) if name.endswith("head_out") else (n, length, 32)
        assert seen[name][0] == want, name
    assert _no_hooks(model)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_reading_hooks_leave_logits_exactly_equal(family: str) -> None:
    model = MODELS[family]()
    points = HookPoints(model)
    plain = model(**_inputs(model)).logits
    with points.cache(points.names()) as store:
        hooked = model(**_inputs(model)).logits
    assert torch.equal(plain, hooked)
    assert all(len(v) == 1 for v in store.values())


@pytest.mark.parametrize("family", sorted(MODELS))
def test_residual_points_equal_transformers_hidden_states(family: str) -> None:
    model = MODELS[family]()
    points = HookPoints(model)
    names = ["blocks.0.resid_pre", "blocks.0.resid_post", "blocks.1.resid_pre", "blocks.1.resid_post"]
    if family != "bert":
        names.append("final_norm")
    with points.cache(names) as store:
        hidden = model(**_inputs(model), output_hidden_states=True).hidden_states
    torch.testing.assert_close(store["blocks.0.resid_pre"][0], hidden[0], rtol=0, atol=0)
    torch.testing.assert_close(store["blocks.0.resid_post"][0], hidden[1], rtol=0, atol=0)
    torch.testing.assert_close(store["blocks.1.resid_pre"][0], hidden[1], rtol=0, atol=0)
    # transformers normalises the last entry of Llama / GPT-2; BERT has no final norm
    last = "final_norm" if family != "bert" else "blocks.1.resid_post"
    torch.testing.assert_close(store[last][0], hidden[2], rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_head_out_through_the_projection_gives_attn_out(family: str) -> None:
    model = MODELS[family]()
    points = HookPoints(model)
    with points.cache(["blocks.1.head_out", "blocks.1.attn_out"]) as store:
        model(**_inputs(model))
    heads, attn = store["blocks.1.head_out"][0], store["blocks.1.attn_out"][0]
    proj = model.get_submodule(points.module_name("blocks.1.head_out"))
    torch.testing.assert_close(proj(heads.flatten(-2)), attn, rtol=0, atol=1e-6)
    # per head: each head's share through the projection; the bias counted once
    bias = proj(torch.zeros_like(heads.flatten(-2)))
    shares = [
        proj((heads * (torch.arange(points.n_heads) == h)[:, None]).flatten(-2)) - bias for h in range(points.n_heads)
    ]
    torch.testing.assert_close(torch.stack(shares).sum(0) + bias, attn, rtol=0, atol=1e-5)
    assert not torch.allclose(shares[0], shares[1])


@pytest.mark.parametrize("family", sorted(CAUSAL))
def test_head_out_is_each_heads_attention_times_its_values(family: str) -> None:
    """``head_out[..., h, :]`` is head h's own ``attn_probs[h] @ V[kv(h)]`` (GQA: query heads share KV heads).

    Shares summing to ``attn_out`` follow from linearity for any split, so this checks the split itself.
    """
    model = CAUSAL[family]()
    points = HookPoints(model)
    values: dict[int, torch.Tensor] = {}
    handles = []
    for i in range(points.n_layers):
        if family == "llama":
            proj, cut = model.model.layers[i].self_attn.v_proj, None
        else:
            proj, cut = model.transformer.h[i].attn.c_attn, model.config.n_embd
        handles.append(
            proj.register_forward_hook(
                lambda m, a, out, i=i, cut=cut: values.__setitem__(i, out if cut is None else out[..., 2 * cut :])
            )
        )
    heads: dict[str, torch.Tensor] = {}
    names = [f"blocks.{i}.head_out" for i in range(points.n_layers)]
    try:
        with torch.no_grad(), points.hooks(dict.fromkeys(names, lambda act, name: heads.__setitem__(name, act))):
            probs = model(**_inputs(model), output_attentions=True).attentions
    finally:
        for handle in handles:
            handle.remove()
    n_heads, d_head = points.n_heads, points.d_head
    for i, name in enumerate(names):
        v = values[i].reshape(*values[i].shape[:2], -1, d_head)  # (N, L, KV, d_head)
        group = n_heads // v.shape[2]
        assert (group > 1) == (family == "llama")  # the tiny Llama has grouped-query attention
        for h in range(n_heads):
            expected = probs[i][:, h] @ v[:, :, h // group]
            torch.testing.assert_close(heads[name][:, :, h], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(CAUSAL))
def test_replacing_an_activation_changes_what_follows(family: str) -> None:
    model = CAUSAL[family]()
    points = HookPoints(model)
    plain = model(**_inputs(model)).logits
    with points.hooks({"blocks.0.mlp_out": lambda act, name: act.clone()}):
        same = model(**_inputs(model)).logits
    assert torch.equal(plain, same)
    with (
        points.hooks({"blocks.0.head_out": lambda act, name: torch.zeros_like(act)}),
        points.cache(["blocks.0.attn_out"]) as store,
    ):
        ablated = model(**_inputs(model)).logits
    bias = getattr(model.get_submodule(points.module_name("blocks.0.head_out")), "bias", None)
    expected = torch.zeros(32) if bias is None else bias
    torch.testing.assert_close(store["blocks.0.attn_out"][0], expected.expand_as(store["blocks.0.attn_out"][0]))
    assert not torch.allclose(plain, ablated)
    # resid_pre replacement (a pre-hook on the block) reaches resid_post
    with (
        points.hooks({"blocks.1.resid_pre": lambda act, name: act + 1.0}),
        points.cache(["blocks.1.resid_pre"]) as seen,
    ):
        shifted = model(**_inputs(model)).logits
    assert not torch.allclose(plain, shifted)
    with points.cache(["blocks.0.resid_post"]) as base:
        model(**_inputs(model))
    # hooks on one point run in the order attached: the cache, entered second, sees the replacement
    torch.testing.assert_close(seen["blocks.1.resid_pre"][0], base["blocks.0.resid_post"][0] + 1.0)


def test_bert_classifier_hooks_change_its_logits() -> None:
    model = tiny_bert_classifier()
    points = HookPoints(model)
    plain = model(**_inputs(model)).logits
    with points.hooks({"embed": lambda act, name: torch.zeros_like(act)}):
        zeroed = model(**_inputs(model)).logits
    assert not torch.allclose(plain, zeroed)
    assert points.module_name("embed") == "bert.embeddings.word_embeddings"


def test_hooks_removed_after_an_exception_in_the_body_and_in_a_hook() -> None:
    model = tiny_llama()
    points = HookPoints(model)
    with pytest.raises(RuntimeError, match="boom"), points.hooks({"blocks.0.attn_out": lambda a, n: None}):
        raise RuntimeError("boom")
    assert _no_hooks(model)

    def fail(act: torch.Tensor, name: str) -> None:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"), points.hooks({"embed": lambda a, n: None, "final_norm": fail}):
        model(**_inputs(model))
    assert _no_hooks(model)


def test_bad_names_and_replacements_are_refused_in_one_line() -> None:
    model = tiny_gpt2()
    points = HookPoints(model)
    for bad in ("blocks.2.resid_pre", "blocks.0.resid", "resid_pre", "blocks.x.mlp_out"):
        with pytest.raises(UnknownNameError, match="unknown hook point") as err:
            with points.hooks({bad: lambda a, n: None}):
                pass
        assert "\n" not in str(err.value)
    assert _no_hooks(model)
    with pytest.raises(InputError, match="not a tensor of shape"), points.hooks({"embed": lambda a, n: a[:, :1]}):
        model(**_inputs(model))
    assert _no_hooks(model)
    with pytest.raises(UnknownNameError, match="final_norm"):
        HookPoints(tiny_bert_classifier()).module_name("final_norm")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)
        self.width = 4
        self.ff = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.out(torch.tanh(self.mix(x)))
        return x + self.ff(x)


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 8)
        self.stack = nn.ModuleList([_Block(), _Block()])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids)
        for block in self.stack:
            x = block(x)
        return x


def test_unknown_architecture_is_refused_and_a_custom_table_works() -> None:
    with pytest.raises(InputError, match=r"llama, gpt2, bert.*HookTable") as err:
        HookPoints(_Custom())
    assert "\n" not in str(err.value)
    table = HookTable("custom", layers="stack", embed="tok", attn="out", mlp="ff", attn_proj="out", head_dim="width")
    holder = nn.Sequential(_Custom())  # detection searches submodules too
    points = HookPoints(holder, table=table)
    assert points.n_heads == 2 and points.module_name("blocks.1.mlp_out") == "0.stack.1.ff"
    ids = torch.tensor([[1, 2, 3]])
    with points.cache(["blocks.1.head_out", "blocks.1.attn_out"]) as store:
        holder(ids)
    assert store["blocks.1.head_out"][0].shape == (1, 3, 2, 4)
