"""Path patching: equals head patching through the final residual when no heads follow, equals a hand-built
three-run computation with frozen heads otherwise."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, LanguageModel
from mlsafety.monitoring.interp import head_patching, logit_diff, patched, path_patching
from mlsafety.monitoring.interp._common import answer_ids, encode_pairs, forward_last
from tests.monitoring.interp.conftest import make_pairs


def test_final_residual_receiver_equals_head_patching_of_last_layer_heads(lm: LanguageModel) -> None:
    pairs = make_pairs(4, 5, seed=7)
    last = lm.n_layers - 1
    heads = head_patching(lm, **pairs, layers=[last])  # type: ignore[arg-type]
    senders = [(last, h) for h in range(lm.points.n_heads)]
    path = path_patching(lm, **pairs, senders=senders, receivers=[f"blocks.{last}.resid_post"], separately=True)  # type: ignore[arg-type]
    assert path.values.shape == (4, lm.points.n_heads)
    torch.testing.assert_close(path.raw, heads.raw[:, 0], atol=1e-4, rtol=1e-4)


def _by_hand(lm: LanguageModel, pairs: dict, sender: tuple[int, int], receiver: tuple[int, int] | None) -> torch.Tensor:
    clean_b, corr_b = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    n = len(pairs["clean"])
    correct, wrong = answer_ids(lm, pairs["correct"], n, "c"), answer_ids(lm, pairs["wrong"], n, "w")
    names = [f"blocks.{i}.head_out" for i in range(lm.n_layers)]
    _, clean_acts = lm.run_with_cache(clean_b, names)
    _, corr_acts = lm.run_with_cache(corr_b, names)
    layer, head = sender
    later = f"blocks.{layer + 1}.head_out"
    others = [h for h in range(lm.points.n_heads) if receiver is None or h != receiver[1]]
    seen: dict[str, torch.Tensor] = {}
    with (
        torch.no_grad(),
        patched(lm, {names[layer]: clean_acts[names[layer]]}, heads=[head]),
        patched(lm, {later: corr_acts[later]}, heads=others),
        lm.hooks({later: lambda act, name: seen.__setitem__(name, act.clone())}),
    ):
        logits = forward_last(lm, corr_b.input_ids, corr_b.attention_mask)
    if receiver is None:
        return logit_diff(logits, correct, wrong)
    with torch.no_grad(), patched(lm, {later: seen[later]}, heads=[receiver[1]]):
        logits = forward_last(lm, corr_b.input_ids, corr_b.attention_mask)
    return logit_diff(logits, correct, wrong)


@pytest.mark.parametrize("receiver", [None, (1, 1)])
def test_equals_the_three_runs_by_hand(lm: LanguageModel, receiver: tuple[int, int] | None) -> None:
    pairs = make_pairs(4, 5, seed=8)
    receivers = ["blocks.1.resid_post"] if receiver is None else [receiver]
    path = path_patching(lm, **pairs, senders=[(0, 0)], receivers=receivers)  # type: ignore[arg-type]
    torch.testing.assert_close(path.raw[:, 0], _by_hand(lm, pairs, (0, 0), receiver), atol=1e-4, rtol=1e-4)
    # a path is not the sender's total effect: head patching of (0, 0) differs
    total = head_patching(lm, **pairs, layers=[0])  # type: ignore[arg-type]
    assert not torch.allclose(total.raw[:, 0, 0], path.raw[:, 0], atol=1e-4)


def test_bad_input(llama: LanguageModel) -> None:
    pairs = make_pairs(2, 4)
    with pytest.raises(InputError, match="q / k / v"):
        path_patching(llama, **pairs, senders=[(0, 0)], receivers=[(1, 0, "q")])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not after any sender"):
        path_patching(llama, **pairs, senders=[(1, 0)], receivers=[(1, 2)])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="out of range"):
        path_patching(llama, **pairs, senders=[(5, 0)], receivers=["final_norm"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown hook point"):
        path_patching(llama, **pairs, senders=[(0, 0)], receivers=["blocks.1.resid_mid"])  # type: ignore[arg-type]


def _three_layer_llama() -> LanguageModel:
    from transformers import LlamaForCausalLM

    from tests.support.text import tiny_llama

    base = tiny_llama(0)
    config = base.config
    config.num_hidden_layers = 3
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    model.tokenizer = base.tokenizer  # type: ignore[assignment]
    return LanguageModel(model)


def test_receivers_at_two_layers_are_frozen_in_run_two() -> None:
    """Wang et al.'s run 2 freezes the receivers too and only records what they compute, so a path
    sender -> receiver (1, 0) -> receiver (2, 0) is not counted as direct into (2, 0)."""
    lm = _three_layer_llama()
    pairs = make_pairs(4, 5, seed=9)
    sender, receivers = (0, 0), [(1, 0), (2, 0)]
    clean_b, corr_b = encode_pairs(lm, pairs["clean"], pairs["corrupted"])
    correct, wrong = answer_ids(lm, pairs["correct"], 4, "c"), answer_ids(lm, pairs["wrong"], 4, "w")
    names = [f"blocks.{i}.head_out" for i in range(3)]
    _, clean_acts = lm.run_with_cache(clean_b, names)
    _, corr_acts = lm.run_with_cache(corr_b, names)
    seen: dict[str, torch.Tensor] = {}

    def freeze(act: torch.Tensor, name: str) -> torch.Tensor:  # run 2: only the sender moves
        seen[name] = act.clone()
        new = corr_acts[name].clone()
        if name == names[sender[0]]:
            new[:, :, sender[1]] = clean_acts[name][:, :, sender[1]]
        return new

    with torch.no_grad(), lm.hooks(dict.fromkeys(names, freeze)):
        forward_last(lm, corr_b.input_ids, corr_b.attention_mask)
    fns = {names[layer]: seen[names[layer]] for layer, _ in receivers}
    with torch.no_grad(), patched(lm, fns, heads=[0]):  # run 3: both receivers get their run-2 outputs
        expected = logit_diff(forward_last(lm, corr_b.input_ids, corr_b.attention_mask), correct, wrong)
    path = path_patching(lm, **pairs, senders=[sender], receivers=receivers)  # type: ignore[arg-type]
    torch.testing.assert_close(path.raw[:, 0], expected, atol=1e-4, rtol=1e-4)
