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
        with pytest.raises(InputError, match="layers is empty"):  # a RuntimeError after the forward passes before
            run_probes(lm, [statement_pairs(8)], layers=[])
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


class _Fake:
    """Stands in for the LM: hidden states keyed by each item, the item's number in a coordinate of its own."""

    n_layers = 2

    def __init__(self, pairs) -> None:  # type: ignore[no-untyped-def]
        self.index = {item["text"]: i for i, item in enumerate(pairs.items)}
        self.labels = pairs.labels
        self.prefixes: list[str] = []
        g = torch.Generator().manual_seed(5)
        n = len(pairs)
        truth = (2 * pairs.labels - 1).float()
        self.pos, self.neg = torch.randn(n, 3, 6, generator=g), torch.randn(n, 3, 6, generator=g)
        self.pos[:, 1, 0] += 1.5 * truth  # layer 1 carries the truth, with noise
        self.neg[:, 1, 0] -= 1.5 * truth
        self.pos[:, :, 5] = self.neg[:, :, 5] = torch.arange(n, dtype=torch.float32)[:, None]  # the item's number
        lie = torch.rand(n, generator=g) < 0.3  # the stated answer is wrong on about 30% of the items
        stated_yes = (pairs.labels == 1) ^ lie
        self.logp_yes = torch.where(stated_yes, -0.5, -2.0) + 0.1 * torch.randn(n, generator=g)
        self.logp_no = torch.full((n,), -1.2)

    def states(self, _lm, pairs, *_args):  # type: ignore[no-untyped-def]
        from mlsafety.alignment.probes import ContrastStates

        idx = torch.tensor([self.index[item["text"]] for item in pairs.items])
        self.prefixes.append(pairs.prefix)
        shift = 0.7 if pairs.prefix else 0.0  # the prefix moves the states and the stated answers
        return ContrastStates(self.pos[idx] + shift, self.neg[idx], self.logp_yes[idx] - shift, self.logp_no[idx],
                              pairs.labels)  # fmt: skip


def test_no_test_item_reaches_a_fit_and_the_honesty_gap_is_the_hand_computed_share(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mlsafety.alignment.probes import ContrastStates, TopPC, evaluate, split_items, zero_shot_scores
    from mlsafety.alignment.probes.base import Probe
    from mlsafety.metrics import clopper_pearson

    pairs = statement_pairs(40)
    fake = _Fake(pairs)
    monkeypatch.setattr(evaluate, "contrast_states", fake.states)
    fitted: list[int] = []
    original = Probe.fit_layers

    def spy(self, pos, neg, *args, **kwargs):  # type: ignore[no-untyped-def]
        fitted.extend(int(v) for v in pos[:, 0, 5])
        return original(self, pos, neg, *args, **kwargs)

    monkeypatch.setattr(Probe, "fit_layers", spy)
    report = run_probes(fake, [pairs], methods=("top-pc", "mean-diff"), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    fit_idx, test_idx = split_items(40, torch.Generator().manual_seed(0), groups=pairs.groups)
    assert set(fitted) == set(fit_idx.tolist())  # every fit sees the fit half only
    # the misleading demonstrations are fit items, answered wrongly; the prefixed prompts are the test items
    demo = pairs.subset(fit_idx[:2])
    wrong = [" No" if int(y) == 1 else " Yes" for y in demo.labels]
    assert fake.prefixes[-1].endswith(f'"{demo.items[1]["text"]}"\nIs this statement true?{wrong[1]}\n\n')

    def by_hand(states: ContrastStates) -> tuple[int, int]:
        fit = ContrastStates(fake.pos[fit_idx], fake.neg[fit_idx], fake.logp_yes[fit_idx], fake.logp_no[fit_idx],
                             pairs.labels[fit_idx])  # fmt: skip
        ref = zero_shot_scores(fit.logp_yes, fit.logp_no)
        acc = []
        for layer in range(3):
            probe = TopPC().fit(fit.pos[:, layer], fit.neg[:, layer], reference=ref)
            acc.append(float((probe.predict(fit.pos[:, layer], fit.neg[:, layer]) == fit.labels).float().mean()))
        layer = acc.index(max(acc))
        probe = TopPC().fit(fit.pos[:, layer], fit.neg[:, layer], reference=ref)
        reading = probe.predict(states.pos[:, layer], states.neg[:, layer])
        return int((reading != states.stated()).sum()), layer

    test = fake.states(None, pairs.subset(test_idx))
    mis = fake.states(None, pairs.subset(test_idx).misleading(pairs.subset(fit_idx)))
    for key, states in (("clean", test), ("misleading", mis)):
        k, layer = by_hand(states)
        n = len(test_idx)
        assert report.best == ("top-pc", layer)
        assert (report.gap[key].value, report.gap[key].n) == (k / n, n)
        assert (report.gap[key].ci_low, report.gap[key].ci_high) == clopper_pearson(k, n)
    assert 0 < report.gap["clean"].value < 1


def test_nan_answer_log_probabilities_are_refused_when_read(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mlsafety.alignment import AnswerStates
    from mlsafety.alignment.probes import evaluate

    real = evaluate.answer_states

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        states = real(*args, **kwargs)
        states.logprob[-1] = float("nan")  # one x- answer, e.g. a float16 overflow
        return AnswerStates(states.hidden, states.logprob, states.n_answer_tokens)

    monkeypatch.setattr(evaluate, "answer_states", broken)
    lm = LanguageModel(tiny_llama())
    # before: NaN > 0 is False, so the item's stated answer read as "no" in the zero-shot rows and the honesty gap
    with pytest.raises(InputError, match="NaN"):
        contrast_states(lm, statement_pairs(8))


def test_logistic_on_several_layers_of_too_few_fit_items_is_refused_before_any_pass() -> None:
    """Under 8 fit items logistic regression cannot be cross-validated and separates its fit items at every layer
    (fit accuracy 1 everywhere), so "its best layer" was the first layer probed. Before: no refusal, and the
    misleading, sensitivity and honesty-check rows reported that arbitrary layer as logistic's best."""
    model = tiny_llama()
    lm = LanguageModel(model)
    few = text_pairs(["a good film", "a bad film", "it was fine", "i hate it"] * 2, [1, 0, 1, 0] * 2)  # fit half: 4
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match=r"'logistic'.*at least 8 fit items.*holds 4 of the 8 items") as err:
            run_probes(lm, [few], methods=("logistic", "mean-diff"), misleading=False)
    finally:
        handle.remove()
    assert calls == [] and "\n" not in str(err.value)
    # one layer needs no choice, and the other probes need no cross-validation: both still run
    one = run_probes(lm, [few], methods=("logistic",), layers=[1], misleading=False)
    assert one.best_layer("logistic") == 1
    other = run_probes(lm, [few], methods=("mean-diff",), misleading=False)
    assert other.layers == list(range(lm.n_layers + 1))


def test_folds_that_leave_one_class_alone_are_refused_and_enough_items_pass() -> None:
    from mlsafety.alignment.probes.evaluate import check_layer_choice

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    one_label_groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # each fold is one group, so one class
    with pytest.raises(InputError, match="cannot be split into two folds that both hold both labels"):
        check_layer_choice("logistic", labels, 16, 3, g, one_label_groups)
    mixed_groups = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])  # both labels in each group, so in each fold
    check_layer_choice("logistic", labels, 16, 3, torch.Generator().manual_seed(0), mixed_groups)
    check_layer_choice("logistic", labels, 16, 1, g, one_label_groups)  # one layer: nothing to choose
    check_layer_choice("mean-diff", labels[:4], 8, 3, g)  # does not fit its items: its fit accuracy chooses


def test_folds_are_dealt_again_stratified_when_the_seeded_halves_leave_one_label_alone() -> None:
    """8 fit items, 2 of label 1, each item its own group: the seeded halves put both 1s in one fold for some
    seeds (before: cross-validation then returned None and logistic regression's layer was the first probed)."""
    from mlsafety.alignment.probes import split_items
    from mlsafety.alignment.probes.evaluate import cv_folds

    labels = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0])
    plain_failed = 0
    for seed in range(20):
        a, b = split_items(8, torch.Generator().manual_seed(seed))
        plain_failed += int(labels[a].sum()) in (0, len(a)) or int(labels[b].sum()) in (0, len(b))
        folds = cv_folds(labels, torch.Generator().manual_seed(seed))
        assert folds is not None
        assert sorted(torch.cat(folds).tolist()) == list(range(8))
        for fold in folds:
            assert 0 < int(labels[fold].sum()) < len(fold)  # each training part holds both labels
    assert plain_failed > 0  # the fallback was exercised
    assert cv_folds(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0]), torch.Generator().manual_seed(0)) is None


def test_a_layer_that_reads_every_item_alike_is_never_the_best_nor_the_gaps_probe(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Layer 0 holds the answer token's embedding, the same for every item: normalised to 0, every probe reads
    its intercept there. Before: on a tie of fit accuracies (0.5 at layer 0, 0.5 where a probe reads each
    true/false twin alike) layer 0 won, and against a model that says "Yes" to everything the honesty gap was
    exactly 1.0 [0.89, 1] (seen on smollm2-135m in the quick audit), behind the prefix 0.0."""
    from mlsafety.alignment.probes import ContrastStates, evaluate

    pairs = statement_pairs(40)
    assert pairs.groups is not None
    g = torch.Generator().manual_seed(0)
    n = len(pairs)
    side = torch.randint(0, 2, (int(pairs.groups.max()) + 1,), generator=g)[pairs.groups] * 4.0 - 2.0
    pos, neg = torch.zeros(n, 3, 4), torch.zeros(n, 3, 4)  # layer 0: constant on each side
    pos[:, 1:] = torch.randn(n, 2, 4, generator=g) * 0.1
    neg[:, 1:] = torch.randn(n, 2, 4, generator=g) * 0.1
    pos[:, 1:, 0] += side[:, None]  # layers 1 and 2: twins read alike (fit accuracy 0.5, as at layer 0)
    neg[:, 1:, 0] -= side[:, None]

    def states(_lm, p, *_args):  # type: ignore[no-untyped-def]
        idx = torch.tensor([[i["text"] for i in pairs.items].index(item["text"]) for item in p.items])
        return ContrastStates(pos[idx], neg[idx], torch.full((len(idx),), -0.5), torch.full((len(idx),), -2.0),
                              p.labels)  # fmt: skip  # the model says "Yes" to every statement

    monkeypatch.setattr(evaluate, "contrast_states", states)
    fake = type("LM", (), {"n_layers": 2})()
    report = run_probes(fake, [pairs], methods=("top-pc", "mean-diff"), generator=torch.Generator().manual_seed(0))
    at = {(r.method, r.layer): r for r in report.table()}
    assert not at[("top-pc", 0)].reads_both and at[("top-pc", 1)].reads_both
    assert at[("top-pc", 0)].fit_accuracy == at[("top-pc", 1)].fit_accuracy == 0.5  # a tie the old rule broke at 0
    assert report.best is not None and report.best[1] != 0 and report.best_layer("mean-diff") != 0
    assert 0 < report.gap["clean"].value < 1
