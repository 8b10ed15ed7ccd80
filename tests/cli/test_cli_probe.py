"""``mlsafety probe``: the per-layer table on a tiny saved Llama; bad input is one line and exit 2 (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.cli.cli_support import one_error_line
from tests.support.text import save_with_tokenizer, tiny_llama, tiny_tokenizer

FACTS = [("paris", "yes", 1), ("paris", "no", 0), ("london", "yes", 1), ("london", "no", 0), ("france", "yes", 0),
         ("france", "no", 1), ("england", "yes", 0), ("england", "no", 1)]  # fmt: skip
EIGHT = "question,answer,label\n" + "".join(f"is {c} a city ?,{a},{lab}\n" for c, a, lab in FACTS)
ROWS = EIGHT + "".join(f"is {c} a capital city ?,{a},{lab}\n" for c, a, lab in FACTS)  # 16: 8 to fit, 8 to test
FAST = ("--methods", "logistic,top-pc,mean-diff", "--layers", "0,2")


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe-cli")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    (folder / "qa.csv").write_text(ROWS, encoding="utf-8")
    (folder / "eight.csv").write_text(EIGHT, encoding="utf-8")
    (folder / "one.csv").write_text("question,answer,label\nq ?,a,1\nr ?,b,1\n", encoding="utf-8")
    return folder


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["probe", *args])


def test_probe_prints_the_per_layer_table_for_a_user_file(d: Path) -> None:
    result = run("--model", str(d / "llama"), "--data", str(d / "qa.csv"), *FAST, "--template", "all")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "probe accuracy on qa (correct-answer)" in out and "probe accuracy on qa (claim)" in out
    assert "zero-shot:" in out and "honesty gap (stated answer vs top-pc" in out
    assert "spread over templates" in out and "behind a misleading prefix" in out


def test_probe_json_on_statements(d: Path) -> None:
    result = run("--model", str(d / "llama"), "--data", "statements", "--n", "16", *FAST, "--json", "--no-misleading")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dataset"] == "statements" and data["n_test"] == 8
    layers = {r["layer"] for r in data["results"]["is-true"]}
    assert layers == {0, 2, -1} and set(data["honesty_gap"]) == {"clean"}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--data", "one.csv"), ("one class only",)),
        (("--data", "qa.csv", "--template", "Q: {question} A: {answer_text} right?"), ("--template", "{answer}")),
        (("--data", "qa.csv", "--template", "Q: {txt} right?{answer}"), ("--template", "txt", "answer_text")),
        (("--data", "qa.csv", "--template", "nope"), ("unknown",)),
        (("--data", "qa.csv", "--layers", "a,b"), ("--layers",)),
        (("--data", "qa.csv", "--methods", "ccs,zzz"), ("zzz",)),
        (("--data", "nothing.txt"), ("statements, mr",)),
        # 4 fit items: logistic cannot be cross-validated, and every layer fits them, so no layer can be chosen
        (("--data", "eight.csv"), ("'logistic'", "at least 8 fit items", "holds 4 of the 8")),
    ],
)
def test_bad_input_is_one_line(d: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    args = tuple(str(d / a) if a.endswith((".csv", ".txt")) else a for a in args)
    one_error_line(run("--model", str(d / "llama"), *args), *needles)


def test_a_model_without_hidden_state_access_is_one_line(d: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = tiny_tokenizer("bos")
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    folder = d / "neox"
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    one_error_line(run("--model", str(folder), "--data", str(d / "qa.csv")), "hidden states")
