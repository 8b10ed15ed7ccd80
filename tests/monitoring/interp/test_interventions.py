"""Interventions: identity hooks change nothing, hooks are removed after errors, patch / ablate / cache semantics."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, LanguageModel, UnknownNameError
from mlsafety.monitoring.interp import ablated, cache, mean_activations, patched
from tests.monitoring.interp.conftest import make_pairs


def _hook_count(lm: LanguageModel) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in lm.module.modules()
    )


def _logits(lm: LanguageModel, texts: list[str]) -> torch.Tensor:
    logits, _ = lm.run_with_cache(texts, [])
    return logits


def test_identity_hooks_leave_the_logits_exactly_equal(lm: LanguageModel) -> None:
    texts = make_pairs(3, 5, ragged=True)["clean"]
    plain = _logits(lm, texts)
    every = {name: (lambda act, name: act) for name in lm.hook_points()}
    with patched(lm, every):
        hooked = _logits(lm, texts)
    assert torch.equal(plain, hooked)


def test_hooks_are_removed_after_an_exception(lm: LanguageModel) -> None:
    before = _hook_count(lm)
    with pytest.raises(RuntimeError, match="boom"), patched(lm, {"blocks.0.mlp_out": torch.zeros(1)}):
        assert _hook_count(lm) == before + 1
        raise RuntimeError("boom")
    assert _hook_count(lm) == before
    with pytest.raises(RuntimeError, match="boom"), ablated(lm, ["blocks.1.attn_out"], how="zero"):
        raise RuntimeError("boom")
    assert _hook_count(lm) == before


def test_unknown_hook_names_list_the_valid_ones(llama: LanguageModel) -> None:
    with pytest.raises(UnknownNameError, match="resid_pre"), patched(llama, {"blocks.9.resid_pre": torch.zeros(1)}):
        pass
    with (
        pytest.raises(InputError, match="head_out points only"),
        patched(llama, {"blocks.0.mlp_out": torch.zeros(1)}, heads=[0]),
    ):
        _logits(llama, ["the cat"])


def test_patch_at_positions_and_heads_touches_only_them(llama: LanguageModel) -> None:
    texts = ["the cat sat on the mat", "a dog ran to the big red"]
    name, later = "blocks.0.head_out", "blocks.1.resid_pre"
    plain = cache(llama, texts, [name, later])
    seen: dict[str, torch.Tensor] = {}
    with (
        patched(llama, {name: torch.full((1,), 3.0)}, positions=[-1], heads=[2]),
        llama.hooks({name: lambda act, n: seen.__setitem__(n, act.clone())}),
    ):
        cache(llama, texts, [])
    # the recording hook ran after the patch: only column -1, head 2 changed
    changed = seen[name] != plain[name]
    assert changed[:, -1, 2].all() and changed.sum() == changed[:, -1, 2].numel()
    with patched(llama, {name: torch.full((1,), 3.0)}, positions=[-1], heads=[2]):
        after = cache(llama, texts, [later])[later]
    assert torch.equal(after[:, :-1], plain[later][:, :-1])  # causal: earlier positions untouched
    assert not torch.allclose(after[:, -1], plain[later][:, -1])


def test_zero_and_mean_ablation(llama: LanguageModel) -> None:
    texts = ["the cat sat on the mat", "a dog ran", "we saw a big film"]
    name = "blocks.1.mlp_out"
    means = mean_activations(llama, texts, [name, "blocks.0.head_out"])
    recorded = cache(llama, texts, [name])
    real = recorded.batch.attention_mask.bool()
    torch.testing.assert_close(means[name], recorded[name][real].mean(0))
    assert means["blocks.0.head_out"].shape == (llama.points.n_heads, llama.points.d_head)
    seen: list[torch.Tensor] = []
    for how, expected in (("zero", torch.zeros_like(means[name])), ("mean", means[name])):
        with (
            ablated(llama, [name], how=how, means=means),
            llama.hooks(  # type: ignore[arg-type]
                {name: lambda act, n: seen.append(act.clone())}
            ),
        ):
            _logits(llama, texts)
        torch.testing.assert_close(seen[-1], expected.expand_as(seen[-1]))
    with pytest.raises(InputError, match="mean_activations"), ablated(llama, [name], how="mean"):
        pass
    with pytest.raises(InputError, match="how"), ablated(llama, [name], how="half"):  # type: ignore[arg-type]
        pass


def test_per_position_means_average_each_left_padded_column(llama: LanguageModel) -> None:
    texts = ["the cat sat on the mat", "a dog ran", "we saw a big film"]
    names = ["blocks.1.resid_pre", "blocks.0.head_out"]
    means = mean_activations(llama, texts, names, per_position=True)
    recorded = cache(llama, texts, names)
    real = recorded.batch.attention_mask.bool()
    width = real.shape[1]
    assert means["blocks.0.head_out"].shape == (width, llama.points.n_heads, llama.points.d_head)
    act = recorded["blocks.1.resid_pre"]
    for col in (0, 1, width - 1):  # the longest prompt only (its BOS); two prompts; all three (last tokens)
        torch.testing.assert_close(means["blocks.1.resid_pre"][col], act[real[:, col], col].mean(0))
    # the last column's mean is the last tokens' mean, not the pooled one (which the BOS column pulls)
    pooled = mean_activations(llama, texts, names)["blocks.1.resid_pre"]
    assert not torch.allclose(means["blocks.1.resid_pre"][-1], pooled, atol=1e-3)
    seen: list[torch.Tensor] = []
    with (
        ablated(llama, ["blocks.1.resid_pre"], means=means),
        llama.hooks({"blocks.1.resid_pre": lambda a, n: seen.append(a.clone())}),  # type: ignore[arg-type]
    ):
        cache(llama, texts, [])
    torch.testing.assert_close(seen[-1], means["blocks.1.resid_pre"].expand_as(seen[-1]))
