"""TruthfulQA MC1/MC2: hand computations on files the tests write, ties, loaders' bad files, a tiny LM end to end."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from mlsafety.alignment.evals import (
    MCQuestion,
    evaluate_truthfulqa,
    load_truthfulqa,
    mc1_correct,
    mc2_mass,
    score_options,
)
from mlsafety.core import InputError, LanguageModel
from tests.support.text import tiny_llama


class TableScorer:
    """A fake model: every continuation has one token whose log-probability is read from a table."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls: list[int] = []

    def token_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16, progress: Any = None
    ) -> list[torch.Tensor]:
        self.calls.append(len(prompts))
        return [torch.tensor([self.table[c.strip()]]) for c in continuations]


HEADER = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
ROWS = [
    ["Adversarial", "Misc", "Q one?", "Alpha", "Alpha; Beta", "Gamma; Delta", "x"],
    ["Adversarial", "Misc", "Q two?", "Eps.", "Eps.", "Zeta; Eta; Theta", "x"],
    ["Non-Adversarial", "Misc", "Q three?", "Iota", "Iota; Kappa; Lambda", "Mu", "x"],
]
LOGP = {
    "Alpha.": math.log(0.2), "Beta.": math.log(0.1), "Gamma.": math.log(0.3), "Delta.": math.log(0.1),
    "Eps.": math.log(0.5), "Zeta.": math.log(0.1), "Eta.": math.log(0.2), "Theta.": math.log(0.05),
    "Iota.": math.log(0.1), "Kappa.": math.log(0.1), "Lambda.": math.log(0.1), "Mu.": math.log(0.4),
}  # fmt: skip


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_mc2_and_mc1_equal_a_hand_computation_on_a_three_question_csv(tmp_path: Path) -> None:
    questions = load_truthfulqa(_write_csv(tmp_path / "tqa.csv", HEADER, ROWS))
    assert questions[0].mc1_options == ("Alpha.", "Gamma.", "Delta.")  # answers closed with a period
    assert questions[0].mc2_labels == (1, 1, 0, 0)
    scorer = TableScorer(LOGP)
    res = evaluate_truthfulqa(scorer, questions, n_boot=200)
    # by hand: q1 (0.2+0.1)/(0.2+0.1+0.3+0.1) = 0.3/0.7; q2 0.5/0.85; q3 0.3/0.7
    hand = [0.3 / 0.7, 0.5 / 0.85, 0.3 / 0.7]
    torch.testing.assert_close(res.mc2_per_question, torch.tensor(hand, dtype=torch.float64))
    assert res.mc2.value == pytest.approx(sum(hand) / 3)
    assert res.mc2.ci_low <= res.mc2.value <= res.mc2.ci_high
    # MC1 by hand: q1 best 0.2 < 0.3 (wrong), q2 0.5 > 0.2 (right), q3 0.1 < 0.4 (wrong)
    assert res.mc1_per_question.tolist() == [False, True, False]
    assert res.mc1.value == pytest.approx(1 / 3) and res.mc1.n == 3
    assert res.mc1_chance == pytest.approx((1 / 3 + 1 / 4 + 1 / 2) / 3)
    assert scorer.calls == [4 + 4 + 4]  # one scoring call; each distinct answer of a question scored once


def test_mc1_counts_a_tie_as_wrong_and_mc2_survives_very_negative_scores() -> None:
    assert not mc1_correct(torch.tensor([-1.0, -1.0, -5.0]), [1, 0, 0])
    assert mc1_correct(torch.tensor([-1.0, -1.0 - 1e-6, -5.0]), [1, 0, 0])
    assert mc1_correct(torch.tensor([-9.0, -1.0, -0.5]), [0, 0, 1])  # the true option need not come first
    far = torch.tensor([-2000.0, -2001.0, -2000.0])  # exp underflows to 0; log-sum-exp does not
    assert mc2_mass(far, [1, 1, 0]) == pytest.approx((1 + math.exp(-1)) / (2 + math.exp(-1)))


def test_mc_json_loader_reads_targets_and_matches_the_csv(tmp_path: Path) -> None:
    items = [
        {"question": "Q one?", "mc1_targets": {"Alpha.": 1, "Gamma.": 0, "Delta.": 0},
         "mc2_targets": {"Alpha.": 1, "Beta.": 1, "Gamma.": 0, "Delta.": 0}},
    ]  # fmt: skip
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(items))
    from_json = load_truthfulqa(path)
    from_csv = load_truthfulqa(_write_csv(tmp_path / "one.csv", HEADER, ROWS[:1]))
    assert from_json[0].mc1_options == from_csv[0].mc1_options
    assert from_json[0].mc2_labels == from_csv[0].mc2_labels
    res = evaluate_truthfulqa(TableScorer(LOGP), from_json, n_boot=50)
    assert res.mc2.value == pytest.approx(0.3 / 0.7)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "Type,Question,Best Answer,Correct Answers\nx,q,a,a\n", "missing column(s) Incorrect Answers"),
        ("b.csv", "Question,Best Answer,Correct Answers,Incorrect Answers\nq?,a,a,\n", "line 2"),
        ("c.json", json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {"a": 1, "b": 0}}]),
         "exactly one true answer"),
        ("d.json", "[{\"question\": \"q\", \"mc2_targets\": {\"a\": 1, \"b\": 0}}]", "missing key(s) mc1_targets"),
        ("e.json", "{not json", "not valid JSON"),
        ("f.json", json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 2}}]),
         "labels must be 0 or 1"),
        ("g.txt", "whatever", "must be the official .csv"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_with_one_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_truthfulqa(path)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_question_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_truthfulqa(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="at least one true and one false"):
        MCQuestion("q", ("a", "b"), (1, 0), ("a", "b"), (1, 1))


def test_tiny_lm_scores_equal_the_adapter_and_padding_does_not_matter() -> None:
    model = tiny_llama()
    q = MCQuestion("is paris a city ?", ("yes", "no"), (1, 0), ("yes", "true", "no"), (1, 1, 0))
    left = LanguageModel(model, padding_side="left")
    res = evaluate_truthfulqa(left, [q, q], primer="", n_boot=50, batch_size=2)
    direct = left.logprobs(["Q: is paris a city ?\nA:"] * 3, [" yes", " true", " no"])
    assert float(res.mc2_per_question[0]) == pytest.approx(mc2_mass(direct.double(), [1, 1, 0]), abs=1e-5)
    right = evaluate_truthfulqa(LanguageModel(model, padding_side="right"), [q], primer="", n_boot=50, batch_size=3)
    assert float(right.mc2_per_question[0]) == pytest.approx(float(res.mc2_per_question[0]), abs=1e-5)
    scores = score_options(left, ["q: a:"], [[" yes", " no no"]])
    assert scores.tokens[0].tolist() == [1.0, 2.0]
    torch.testing.assert_close(scores.reduce("mean")[0][1], scores.sums[0][1] / 2)


def _answer_logprob(model: Any, prompt: str, answer: str) -> float:
    """Brute force: one unpadded text, log-softmax at every position, summed over the answer's tokens only."""
    tok = model.tokenizer
    n_prompt = len(tok(prompt)["input_ids"])
    ids = torch.tensor([tok(prompt + answer)["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.log_softmax(-1)[0].double()
    return float(sum(logp[t - 1, ids[0, t]] for t in range(n_prompt, ids.shape[1])))


def test_multi_token_answers_are_scored_on_their_own_tokens_by_brute_force() -> None:
    model = tiny_llama()
    questions = [
        MCQuestion(
            "is paris a city ?",
            ("yes it is a big city", "no"),
            (1, 0),
            ("yes it is a big city", "yes", "no", "no it is a small dog"),
            (1, 1, 0, 0),
        ),
        MCQuestion("was the film good ?", ("it was very good", "bad"), (1, 0), ("it was very good", "bad"), (1, 0)),
    ]
    lm = LanguageModel(model, padding_side="left")
    primer = "q: a dog ? a: a dog . "
    res = evaluate_truthfulqa(lm, questions, primer=primer, n_boot=20, batch_size=3)
    mean = evaluate_truthfulqa(lm, questions, primer=primer, reduction="mean", n_boot=20, batch_size=3)
    for qi, q in enumerate(questions):
        prompt = f"{primer}Q: {q.question}\nA:"
        sums = {a: _answer_logprob(model, prompt, " " + a) for a in (*q.mc1_options, *q.mc2_options)}
        n_tok = {a: len(a.split()) for a in sums}  # word-level tokenizer: one token per word
        s1 = [sums[a] for a in q.mc1_options]
        assert bool(res.mc1_per_question[qi]) == (s1[0] > max(s1[1:]))  # the true option is first here
        p2 = [math.exp(sums[a]) for a in q.mc2_options]
        true_mass = sum(p for p, lab in zip(p2, q.mc2_labels) if lab)
        assert float(res.mc2_per_question[qi]) == pytest.approx(true_mass / sum(p2), abs=1e-5)
        pm = [math.exp(sums[a] / n_tok[a]) for a in q.mc2_options]
        pm_true = sum(p for p, lab in zip(pm, q.mc2_labels) if lab)
        assert float(mean.mc2_per_question[qi]) == pytest.approx(pm_true / sum(pm), abs=1e-5)
    scores = score_options(lm, [f"{primer}Q: {questions[0].question}\nA:"], [[" yes it is a big city", " no"]])
    assert scores.tokens[0].tolist() == [6.0, 1.0]  # the answer's tokens, none of the prompt's
    want = [
        _answer_logprob(model, f"{primer}Q: {questions[0].question}\nA:", a) for a in (" yes it is a big city", " no")
    ]
    torch.testing.assert_close(scores.sums[0], torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_nan_score_is_refused_not_counted_as_a_wrong_answer(tmp_path: Path) -> None:
    questions = load_truthfulqa(_write_csv(tmp_path / "tqa.csv", HEADER, ROWS))
    table = dict(LOGP, **{"Gamma.": float("nan")})  # a float16 overflow, say
    # before: NaN > x is False (MC1 wrong) and MC2's mass was NaN, so its bootstrap interval was NaN too
    with pytest.raises(InputError, match="NaN"):
        evaluate_truthfulqa(TableScorer(table), questions, n_boot=20)
    # a log-probability of -inf (an answer the model cannot produce) is a score, not an error
    far = dict(LOGP, **{"Gamma.": float("-inf")})
    assert evaluate_truthfulqa(TableScorer(far), questions, n_boot=20).mc1.n == 3


def test_json_answers_are_stripped_like_the_csvs(tmp_path: Path) -> None:
    """A JSON answer " Alpha." became "  Alpha." after the scorer's space; an empty one was scored as a blank."""
    mc1, mc2 = {" Alpha.": 1, "Gamma. ": 0}, {"Alpha.": 1, " Gamma.": 0}
    items = [{"question": "Q one? ", "mc1_targets": mc1, "mc2_targets": mc2}]
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(items))
    (q,) = load_truthfulqa(path)
    assert q.question == "Q one?" and q.mc1_options == ("Alpha.", "Gamma.") and q.mc2_options == ("Alpha.", "Gamma.")
    items[0]["mc2_targets"] = {"Alpha.": 1, "  ": 0}
    path.write_text(json.dumps(items))
    with pytest.raises(InputError, match="mc2_targets has an empty answer"):
        load_truthfulqa(path)
