"""``mlsafety attack-text``: a table and the marked examples; every bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.audit.test_text_audit import save_model, write_csv
from tests.cli.cli_support import one_error_line
from tests.support.text import tiny_sentences


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack-text-cli")
    save_model(d / "model")
    texts, labels = tiny_sentences(16, seed=4)
    write_csv(d / "data.csv", texts, labels)
    write_csv(d / "stop.csv", [*texts[:15], "the and of it"], labels)  # attacked whole: no share is held out
    return d


def run(*args):
    return CliRunner().invoke(main, ["attack-text", *args])


def test_writes_table_and_marked_examples(d) -> None:
    out = d / "out"
    result = run("--model", str(d / "model"), "--data", str(d / "data.csv"), "--recipe", "hotflip",
                 "--budget", "30", "--n", "6", "--out", str(out), "-p", "min_cos_sim=-1")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("attack_success_rate", "accuracy_under_attack", "perturbed_word_share", "queries_per_example"):
        assert name in result.output
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["recipe"] == "hotflip" and summary["query_budget"] == 30
    won = [r for r in rows if r["status"] == "succeeded"]
    assert summary["succeeded"] == len(won) >= 1 and summary["params"] == {"min_cos_sim": -1}
    for r in rows:
        assert r["queries"] <= 30
        assert len(r["changed"]) <= 2  # the recipe's max_words
        if r["status"] == "succeeded":
            assert r["marked"].count("[[") == len(r["changed"]) >= 1
            assert r["perturbed_pred"] != r["label"]
        else:
            assert r["perturbed"] == r["original"]
    rate = summary["metrics"]["accuracy_under_attack"]
    assert rate["ci_low"] <= rate["value"] <= rate["ci_high"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--budget", "0"], ["--budget", "at least 1"]),
        (["--recipe", "hotflp"], ["hotflip"]),
        (["--n", "0"], ["--n"]),
        (["-p", "beam_widht=2"], ["beam_width"]),
        (["-p", "max_words"], ["NAME=VALUE"]),
    ],
)
def test_bad_options_are_one_line(d, args, needles) -> None:
    out = d / "never"
    result = run("--model", str(d / "model"), "--data", str(d / "data.csv"), "--recipe", "hotflip", "--out", str(out),
                 *args)  # fmt: skip
    one_error_line(result, *needles)
    assert not out.exists()


def test_only_stop_words_is_one_line(d) -> None:
    out = d / "never-stop"
    result = run("--model", str(d / "model"), "--data", str(d / "stop.csv"), "--recipe", "hotflip", "--n", "100",
                 "--out", str(out))  # fmt: skip
    one_error_line(result, "stop words")
    assert not out.exists()


def test_image_model_is_refused(d) -> None:
    out = d / "never-image"
    result = run("--model", "digits-cnn", "--recipe", "hotflip", "--out", str(out))
    one_error_line(result, "text classifier")
    assert not out.exists()


def test_missing_wordnet_names_the_package(d, monkeypatch) -> None:
    from mlsafety.core import InputError
    from mlsafety.robustness.text import _resources
    from mlsafety.zoo._assets import WORDNET_PACKAGES

    def missing() -> None:
        raise InputError(f"WordNet is not installed (/usr/share/wordnet/data.noun is missing); {WORDNET_PACKAGES}")

    monkeypatch.setattr(_resources, "wordnet", missing)
    out = d / "never-wordnet"
    result = run("--model", str(d / "model"), "--data", str(d / "data.csv"), "--recipe", "hotflip", "--out", str(out))
    one_error_line(result, "wordnet-base")
    assert not out.exists()
