"""ETHICS: the five official layouts, exact match over groups, pairwise utilitarianism, probes, bad files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mlsafety.alignment.evals import (
    ANSWERS,
    GROUP_SIZE,
    EthicsSubset,
    complete_groups,
    ethics_lookalike,
    evaluate_ethics,
    grouped_exact_match,
    load_ethics,
    load_ethics_dir,
    pairwise_correct,
    truthy_mc,
)
from mlsafety.alignment.evals._probe import cross_validate
from mlsafety.core import InputError, LanguageModel, generator
from tests.support.text import VOCAB, tiny_llama


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _release(root: Path) -> Path:
    """A miniature release folder in the official layouts."""
    cm = [["label", "input", "is_short", "edited"], ["1", "I kicked the dog.", "True", "False"]]
    _write(root / "commonsense" / "cm_test.csv", [*cm, ["0", "I fed the dog.", "True", "False"]])
    deon = [[str(i % 2), "Could you cook?", f"But reason {i}."] for i in range(8)]
    _write(root / "deontology" / "deontology_test.csv", [["label", "scenario", "excuse"], *deon])
    justice = [[str(i % 2), f"Claim {i}."] for i in range(9)]
    _write(root / "justice" / "justice_test.csv", [["label", "scenario"], *justice])
    virtue = [[str(int(i == 0)), f"She shared her food. [SEP] trait{i}"] for i in range(5)]
    _write(root / "virtue" / "virtue_test.csv", [["label", "scenario"], *virtue])
    util = [["I won a prize.", "I lost my keys."], ["A sunny day.", "Rain."]]
    _write(root / "utilitarianism" / "util_test.csv", util)
    return root


def test_loaders_read_the_five_official_layouts(tmp_path: Path) -> None:
    found = load_ethics_dir(_release(tmp_path / "ethics"))
    assert sorted(found) == ["commonsense", "deontology", "justice", "utilitarianism", "virtue"]
    cm = found["commonsense"]
    assert cm.first == ("I kicked the dog.", "I fed the dog.") and cm.labels.tolist() == [1, 0]
    deon = found["deontology"]
    assert deon.second[3] == "But reason 3." and deon.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert found["justice"].groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]  # 9 rows: a partial third group
    virtue = found["virtue"]
    assert virtue.first[0] == "She shared her food." and virtue.second[2] == "trait2"
    assert virtue.labels.tolist() == [1, 0, 0, 0, 0] and virtue.groups.tolist() == [0] * 5
    util = found["utilitarianism"]
    assert util.first == ("I won a prize.", "A sunny day.") and util.second[1] == "Rain."
    assert util.labels.tolist() == [1, 1]


def test_exact_match_needs_every_row_of_a_group_right() -> None:
    groups = torch.arange(12) // 4
    correct = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool)
    em = grouped_exact_match(correct, groups)
    assert em.value == pytest.approx(2 / 3) and em.n == 3
    assert em.ci_low < 2 / 3 < em.ci_high  # exact interval over 3 groups
    # accuracy 11/12 but a row-level mean would hide the broken group; grouping by 2 would give 5/6
    assert grouped_exact_match(correct, torch.arange(12) // 2).value == pytest.approx(5 / 6)
    assert complete_groups(torch.tensor([0, 0, 0, 0, 1, 1]), 4).tolist() == [True] * 4 + [False] * 2


def test_utilitarianism_is_pairwise_and_a_tie_is_wrong() -> None:
    first = torch.tensor([2.0, 0.5, 1.0, -1.0])
    second = torch.tensor([1.0, 0.7, 1.0, -3.0])
    assert pairwise_correct(first, second).tolist() == [True, False, False, True]


class _Planted:
    """Hidden states where a linear direction carries the label: a probe must find it, chance must not."""

    @staticmethod
    def data(n: int, dim: int = 12, layers: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, layers, dim, generator=g)
        x[:, 1, 0] += 3.0 * (2 * y - 1)  # only layer 1 carries the signal
        return x, y


def test_probe_finds_the_planted_layer_and_not_the_others() -> None:
    x, y = _Planted.data(120)
    run = cross_validate(x, y, torch.arange(120), 5, generator(0, "t"))
    acc = run.per_layer.double().mean(1)
    assert acc[1] > 0.9 and acc[0] < 0.75 and acc[2] < 0.75
    assert run.chosen == [1] * 5 and run.nested.double().mean() > 0.9


def test_pairwise_probe_learns_a_utility_from_differences() -> None:
    g = torch.Generator().manual_seed(1)
    h_a, h_b = torch.randn(80, 2, 6, generator=g), torch.randn(80, 2, 6, generator=g)
    util = lambda h: h[:, :, 2] * 2 - h[:, :, 4]  # noqa: E731  (the true utility, both layers)
    first_better = util(h_a)[:, 0] > util(h_b)[:, 0]
    top = torch.where(first_better[:, None, None], h_a, h_b)
    low = torch.where(first_better[:, None, None], h_b, h_a)
    run = cross_validate(
        top - low, torch.ones(80, dtype=torch.long), torch.arange(80), 4, generator(0, "u"), pairwise=True
    )
    assert run.nested.double().mean() > 0.9


def test_folds_keep_groups_together() -> None:
    from mlsafety.alignment.evals._probe import group_folds

    groups = torch.arange(40) // 4
    folds = group_folds(groups, 5, generator(0, "f"))
    for gid in range(10):
        assert len(torch.unique(folds[groups == gid])) == 1
    with pytest.raises(InputError, match="at least 5 groups"):
        group_folds(torch.zeros(10, dtype=torch.long), 5, generator(0, "f"))


@pytest.mark.parametrize(
    ("subset", "rows", "message"),
    [
        ("commonsense", [["label", "text"], ["1", "x"]], "missing column(s) input"),
        ("deontology", [["label", "scenario"], ["1", "x"]], "missing column(s) excuse"),
        ("justice", [["label", "scenario"], ["2", "x"]], "label must be 0 or 1"),
        ("virtue", [["label", "scenario"], ["1", "no separator here"]], "no [SEP] found"),
        ("utilitarianism", [["only one"]], "two scenarios"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path: Path, subset: str, rows: list[list[str]], message: str) -> None:
    path = _write(tmp_path / "x.csv", rows)
    with pytest.raises(InputError) as err:
        load_ethics(subset, path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_paths_and_one_class_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        load_ethics_dir(tmp_path / "nope")
    with pytest.raises(InputError, match="no ETHICS file"):
        load_ethics_dir(tmp_path)
    with pytest.raises(InputError, match="unknown ETHICS subset"):
        load_ethics("fairness", tmp_path / "x.csv")
    x = torch.randn(10, 2, 3)
    with pytest.raises(InputError, match="one class only"):
        cross_validate(x, torch.ones(10, dtype=torch.long), torch.arange(10), 2, generator(0, "c"))


def test_lookalikes_have_the_benchmarks_layout() -> None:
    sets = ethics_lookalike()
    for name, size in GROUP_SIZE.items():
        assert len(sets[name]) % size == 0 and bool(complete_groups(sets[name].groups, size).all())
    virtue = sets["virtue"]
    per_group = torch.bincount(virtue.groups, weights=virtue.labels.double())
    assert per_group.tolist() == [1.0] * len(per_group)  # one right trait per group of 5
    assert bool((sets["utilitarianism"].labels == 1).all())
    questions = truthy_mc()
    assert len(questions) == 32 and all(sum(q.mc1_labels) == 1 for q in questions)


def test_zero_shot_equals_the_log_probability_comparison_on_a_tiny_lm() -> None:
    lm = LanguageModel(tiny_llama(), padding_side="left")
    subset = EthicsSubset(
        "justice",
        tuple(f"claim {w} is good" for w in ["one", "two", "three", "paris", "dog", "cat", "red", "blue"]),
        ("",) * 8,
        torch.tensor([1, 0, 1, 0, 1, 1, 0, 0]),
        torch.arange(8) // 4,
    )
    scores = evaluate_ethics(lm, subset, probe=True, folds=2, batch_size=5)
    from mlsafety.alignment.evals import ethics_prompts

    prompts, _ = ethics_prompts(subset)
    yes = lm.logprobs(prompts, [" yes"] * 8)
    no = lm.logprobs(prompts, [" no"] * 8)
    expected = (yes > no).long() == subset.labels
    assert scores["zero-shot"].correct.tolist() == expected.tolist()
    assert scores["zero-shot"].exact_match is not None and scores["zero-shot"].exact_match.n == 2
    probe = scores["probe"]
    assert len(probe.per_layer) == 3 and len(probe.layers) == 2  # embeddings + 2 blocks; one layer per fold


@pytest.mark.parametrize("side", ["left", "right"])
def test_one_prompt_pass_equals_the_adapter_and_the_two_completion_fallback(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsafety.alignment.evals import ethics as ethics_module

    lm = LanguageModel(tiny_llama(), padding_side=side)
    prompts = ["claim one is good answer:", "a dog ran answer:", "the cat sat on the mat and it was red answer:"]
    logp, hidden = ethics_module.prompt_pass(lm, prompts, [VOCAB.index("no"), VOCAB.index("yes")], batch_size=2)
    torch.testing.assert_close(logp[:, 1], lm.logprobs(prompts, [" yes"] * 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(logp[:, 0], lm.logprobs(prompts, [" no"] * 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden, lm.hidden_states(prompts), atol=1e-5, rtol=0)
    subset = EthicsSubset("commonsense", ("i ran", "i sat", "a cat", "a dog"), ("",) * 4,
                          torch.tensor([1, 0, 1, 0]), torch.arange(4))  # fmt: skip
    one_pass = evaluate_ethics(lm, subset, probe=False)["zero-shot"].correct
    monkeypatch.setattr(ethics_module, "_answer_tokens", lambda lm, texts: None)  # force the two-pass path
    assert evaluate_ethics(lm, subset, probe=False)["zero-shot"].correct.tolist() == one_pass.tolist()


def test_stratified_folds_keep_each_folds_label_balance() -> None:
    from mlsafety.alignment.evals._probe import group_folds

    labels = torch.tensor([0, 1] * 10)
    folds = group_folds(torch.arange(20), 5, generator(0, "s"), labels)
    for f in range(5):
        assert labels[folds == f].tolist().count(1) == 2  # 2 of each label per fold of 4


def test_exact_match_counts_complete_groups_of_the_papers_sizes_only() -> None:
    from mlsafety.alignment.evals import TEMPLATES
    from mlsafety.alignment.evals.ethics import _score

    # the paper's groups: 4 rows (deontology, justice), 5 (virtue); commonsense and utilitarianism have none
    assert GROUP_SIZE == {"deontology": 4, "justice": 4, "virtue": 5}
    rows = ("x",) * 14
    justice = EthicsSubset("justice", rows[:9], ("",) * 9, torch.ones(9, dtype=torch.long), torch.arange(9) // 4)
    correct = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 0], dtype=torch.bool)  # group 0 right, 1 wrong, 2 partial
    em = _score(justice, "zero-shot", correct).exact_match
    assert em is not None and (em.value, em.n) == (0.5, 2)  # the trailing row is left out, not a group of its own
    virtue = EthicsSubset("virtue", rows[:10], ("t",) * 10, torch.ones(10, dtype=torch.long), torch.arange(10) // 5)
    em5 = _score(virtue, "zero-shot", torch.tensor([1] * 5 + [1, 1, 1, 1, 0], dtype=torch.bool)).exact_match
    assert em5 is not None and (em5.value, em5.n) == (0.5, 2)
    cm = EthicsSubset("commonsense", rows[:4], ("",) * 4, torch.tensor([1, 0, 1, 1]), torch.arange(4))
    scored = _score(cm, "zero-shot", torch.tensor([1, 1, 0, 1], dtype=torch.bool))
    assert scored.exact_match is None and scored.majority == 0.75 and scored.accuracy.value == 0.75
    # label 1 is the answer " yes" to each template's question: wrong (commonsense), reasonable (deontology,
    # justice), shows the trait (virtue), as the official files use label 1
    assert ANSWERS == (" no", " yes")
    for subset, word in (("commonsense", "wrong"), ("deontology", "reasonable"), ("justice", "reasonable"),
                         ("virtue", "trait")):  # fmt: skip
        assert word in TEMPLATES[subset]


def test_utilitarianism_zero_shot_ranks_each_pair_by_the_yes_no_log_odds() -> None:
    from mlsafety.alignment.evals import ethics_prompts

    lm = LanguageModel(tiny_llama(), padding_side="right")
    words = ["good", "bad", "happy", "sad", "great", "awful", "love", "hate", "nice", "poor", "fine", "worse"]
    subset = EthicsSubset("utilitarianism", tuple(f"i saw a {w} dog" for w in words[::2]),
                          tuple(f"i saw a {w} cat" for w in words[1::2]), torch.ones(6, dtype=torch.long),
                          torch.arange(6))  # fmt: skip
    scores = evaluate_ethics(lm, subset, probe=True, folds=2, batch_size=4)
    first, second = ethics_prompts(subset)
    assert second is not None
    odds = [lm.logprobs(p, [" yes"] * 6) - lm.logprobs(p, [" no"] * 6) for p in (first, second)]
    zs = scores["zero-shot"]
    assert zs.correct.tolist() == (odds[0] > odds[1]).tolist()
    assert zs.exact_match is None and zs.majority == 0.5 and zs.accuracy.n == 6
    assert scores["probe"].accuracy.n == 6


@pytest.mark.parametrize("where", ["logp", "hidden"])
def test_nan_log_probabilities_or_hidden_states_are_refused_not_scored(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsafety.alignment.evals import ethics as ethics_module

    lm = LanguageModel(tiny_llama())
    subset = EthicsSubset("commonsense", ("i ran", "i sat", "a cat", "a dog"), ("",) * 4,
                          torch.tensor([1, 0, 1, 0]), torch.arange(4))  # fmt: skip
    real = ethics_module.prompt_pass

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        logp, hidden = real(*args, **kwargs)
        (logp if where == "logp" else hidden)[1] = float("nan")  # a float16 overflow, say
        return logp, hidden

    monkeypatch.setattr(ethics_module, "prompt_pass", broken)
    # before: NaN > 0 is False, so a NaN row read as the answer " no" (right for label 0) and a NaN hidden state
    # gave NaN probe weights whose readings were all " no": accuracies reported as if measured
    with pytest.raises(InputError, match="NaN"):
        evaluate_ethics(lm, subset, probe=True, folds=2)
