"""run_probes on a tiny causal LM: one pass per batch, every table filled, refusals before any pass."""

from __future__ import annotations

import math

import pytest
import torch

from mlsafety.alignment.probes import TEMPLATES, contrast_states, run_probes, statement_pairs, text_pairs
from mlsafety.core import InputError, LanguageModel
from tests.support.text import tiny_llama

FAST = {"ccs": {"epochs": 20, "restarts": 2}}


def test_contrast_states_read_both_answers_in_one_pass_per_batch() -> None:
    model = tiny_llama()
    lm = LanguageModel(model)
    pairs = text_pairs(["a good film", "a bad film", "it was fine", "i hate it", "love"], [1, 0, 1, 0, 1])
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        states = contrast_states(lm, pairs, batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == math.ceil(2 * 5 / 4)  # x+ and x- of 5 items, all layers and both scores
    assert states.pos.shape == states.neg.shape == (5, lm.n_layers + 1, 32)
    torch.testing.assert_close(states.logp_yes, lm.logprobs(pairs.prompts(), [" Yes"] * 5), atol=1e-5, rtol=0)


def test_run_probes_fills_every_table() -> None:
    lm = LanguageModel(tiny_llama())
    base = statement_pairs(24)
    pairs = [base.with_template(t) for t in TEMPLATES["statements"][:2]]
    reviews = text_pairs(["a good film", "a bad film", "it was fine", "i hate it"] * 3, [1, 0, 1, 0] * 3)
    report = run_probes(
        lm, pairs, layers=[1, -1], transfer=[reviews], params=FAST, generator=torch.Generator().manual_seed(0)
    )
    assert report.layers == [1, lm.n_layers] and (report.n_fit, report.n_test) == (12, 12)
    rows = report.table()
    methods = {r.method for r in rows}
    assert methods == {"ccs", "logistic", "mean-diff", "top-pc", "zero-shot", "zero-shot-calibrated"}
    for r in rows:
        assert 0 <= r.accuracy.ci_low <= r.accuracy.value <= r.accuracy.ci_high <= 1 and r.accuracy.n == 12
        assert (r.either_sign is None) == (r.method not in ("ccs", "top-pc"))
        if r.either_sign is not None:
            assert math.isclose(r.either_sign.value, max(r.accuracy.value, 1 - r.accuracy.value))
    assert set(report.sensitivity) == methods
    assert report.best is not None and report.best[0] in ("ccs", "top-pc")
    assert set(report.gap) == {"clean", "misleading"}
    assert set(report.misleading) == methods
    assert set(report.transfer) == {f"{m}:mr" for m in ("ccs", "logistic", "mean-diff", "top-pc")}


def test_refusals_come_before_any_forward_pass() -> None:
    model = tiny_llama()
    lm = LanguageModel(model)
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match="one class only"):
            run_probes(lm, [text_pairs(["a", "b", "c", "d"], [1, 1, 1, 1])])
        with pytest.raises(InputError, match="out of range"):
            run_probes(lm, [statement_pairs(8)], layers=[99])
        with pytest.raises(InputError, match=r"unknown|no probe"):
            run_probes(lm, [statement_pairs(8)], methods=["nope"])
    finally:
        handle.remove()
    assert calls == []


def test_split_keeps_each_group_on_one_side_and_is_seeded() -> None:
    from mlsafety.alignment.probes import split_items

    pairs = statement_pairs(40)
    fit, test = split_items(40, torch.Generator().manual_seed(3), groups=pairs.groups)
    assert pairs.groups is not None
    assert set(pairs.groups[fit].tolist()).isdisjoint(pairs.groups[test].tolist())
    assert sorted(fit.tolist() + test.tolist()) == list(range(40)) and 16 <= len(fit) <= 24
    again, _ = split_items(40, torch.Generator().manual_seed(3), groups=pairs.groups)
    assert torch.equal(fit, again)
    # a true statement and its false twin share a group
    assert int(pairs.groups[0]) == int(pairs.groups[1]) and pairs.labels[:2].tolist() == [1, 0]
