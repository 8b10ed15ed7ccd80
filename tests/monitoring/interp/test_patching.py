"""Activation and head patching: known answers (all positions = clean, nothing = corrupted), batched = naive."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, LanguageModel, Progress
from mlsafety.monitoring.interp import activation_patching, head_patching, logit_diff, normalised, patched
from mlsafety.monitoring.interp._common import answer_ids, encode_pairs, forward_last
from tests.monitoring.interp.conftest import make_pairs


def _naive(lm: LanguageModel, pairs: dict, point: str, direction: str = "denoise") -> torch.Tensor:
    """One forward per (prompt, site), through the public ``patched`` context manager."""
    clean_b, corr_b = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    n, length = clean_b.input_ids.shape
    correct = answer_ids(lm, pairs["correct"], n, "correct")
    wrong = answer_ids(lm, pairs["wrong"], n, "wrong")
    source, target = (clean_b, corr_b) if direction == "denoise" else (corr_b, clean_b)
    out = torch.empty(n, lm.n_layers, length)
    for layer in range(lm.n_layers):
        name = f"blocks.{layer}.{point}"
        _, acts = lm.run_with_cache(source, [name])
        for i in range(n):
            for p in range(length):
                with torch.no_grad(), patched(lm, {name: acts[name][i : i + 1]}, positions=[p]):
                    logits = forward_last(lm, target.input_ids[i : i + 1], target.attention_mask[i : i + 1])
                out[i, layer, p] = logit_diff(logits, correct[i : i + 1], wrong[i : i + 1])[0]
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_sweep_equals_a_naive_loop(lm: LanguageModel, direction: str) -> None:
    pairs = make_pairs(3, 4)
    quiet = Progress(enabled=False)
    result = activation_patching(lm, **pairs, direction=direction, batch_size=7, progress=quiet)  # type: ignore[arg-type]
    naive = _naive(lm, pairs, "resid_pre", direction)
    assert result.raw.shape == naive.shape == (3, lm.n_layers, result.raw.shape[2])
    torch.testing.assert_close(result.raw, naive, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.values, normalised(naive, result.clean.values, result.corrupted.values))


def test_all_positions_at_layer_0_restore_the_clean_answer(lm: LanguageModel) -> None:
    pairs = make_pairs(4, 5, seed=1)
    result = activation_patching(lm, **pairs, positions=None, layers=[0])  # type: ignore[arg-type]
    torch.testing.assert_close(result.raw[:, 0, 0], result.clean.values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.values[:, 0, 0], torch.ones(4), atol=1e-3, rtol=0)
    noised = activation_patching(lm, **pairs, positions=None, layers=[0], direction="noise")  # type: ignore[arg-type]
    torch.testing.assert_close(noised.values[:, 0, 0], torch.zeros(4), atol=1e-3, rtol=0)


def test_patching_identical_prompts_changes_nothing(lm: LanguageModel) -> None:
    """Patching a position where clean and corrupted agree (and stay equal before it) gives 0."""
    pairs = make_pairs(4, 5, seed=2)
    result = activation_patching(lm, **pairs, positions=[1], layers=[0])  # type: ignore[arg-type]
    # column 1 of 6 (BOS + 5 words) is word 0, which differs; column 0 is BOS, which is the same
    same = activation_patching(lm, **pairs, positions=[0], layers=[0])  # type: ignore[arg-type]
    torch.testing.assert_close(same.values, torch.zeros_like(same.values), atol=1e-4, rtol=0)
    assert result.values.abs().max() > 1e-3


def test_head_patching_of_every_head_equals_attn_out_patching(lm: LanguageModel) -> None:
    pairs = make_pairs(3, 5, seed=3)
    heads = head_patching(lm, **pairs)  # type: ignore[arg-type]
    assert heads.values.shape == (3, lm.n_layers, lm.points.n_heads)
    attn = activation_patching(lm, **pairs, point="attn_out", positions=None)  # type: ignore[arg-type]
    clean_b, corr_b = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    n = len(pairs["clean"])
    correct, wrong = answer_ids(lm, pairs["correct"], n, "c"), answer_ids(lm, pairs["wrong"], n, "w")
    for layer in range(lm.n_layers):
        name = f"blocks.{layer}.head_out"
        _, acts = lm.run_with_cache(clean_b, [name])
        with torch.no_grad(), patched(lm, {name: acts[name]}, heads=list(range(lm.points.n_heads))):
            every = logit_diff(forward_last(lm, corr_b.input_ids, corr_b.attention_mask), correct, wrong)
        torch.testing.assert_close(every, attn.raw[:, layer, 0], atol=1e-4, rtol=1e-4)
        # one head at a time, through the batched sweep, equals patched(heads=[h]) alone
        with torch.no_grad(), patched(lm, {name: acts[name]}, heads=[1]):
            one = logit_diff(forward_last(lm, corr_b.input_ids, corr_b.attention_mask), correct, wrong)
        torch.testing.assert_close(one, heads.raw[:, layer, 1], atol=1e-4, rtol=1e-4)


def test_ragged_pairs_blank_the_positions_a_prompt_lacks(llama: LanguageModel) -> None:
    pairs = make_pairs(3, 4, seed=4, ragged=True)
    result = activation_patching(llama, **pairs, layers=[1])  # type: ignore[arg-type]
    assert result.values.shape == (3, 1, 7)
    assert torch.isnan(result.values[0, 0, :2]).all() and not torch.isnan(result.values[2]).any()
    assert result.labels[1] == list(range(-7, 0))
    assert not torch.isnan(result.mean).any()
    assert bool((result.ci_low <= result.mean).all() and (result.mean <= result.ci_high).all())


def test_bad_input(llama: LanguageModel) -> None:
    pairs = make_pairs(3, 4)
    with pytest.raises(InputError, match="pair 1"):
        activation_patching(llama, pairs["clean"], [pairs["corrupted"][0], "a", "b"], pairs["correct"], pairs["wrong"])
    with pytest.raises(InputError, match="not one"):
        activation_patching(llama, pairs["clean"], pairs["corrupted"], ["good bad"] * 3, pairs["wrong"])
    with pytest.raises(InputError, match="unknown token"):  # one token, but [UNK]: not a usable answer
        activation_patching(llama, pairs["clean"], pairs["corrupted"], ["zyzzyva"] * 3, pairs["wrong"])
    with pytest.raises(InputError, match="point must be"):
        activation_patching(llama, **pairs, point="resid_mid")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="direction"):
        activation_patching(llama, **pairs, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_size"):
        activation_patching(llama, **pairs, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="prompt 0"):
        activation_patching(llama, pairs["clean"], pairs["clean"], pairs["correct"], pairs["wrong"])
