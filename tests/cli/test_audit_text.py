"""``mlsafety audit`` on a text model: a saved transformers folder with CSV / JSONL data runs, warns of
truncated texts, gates on text metrics, and every bad text input exits 2 with one line and stores nothing.
"""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.audit.test_text_audit import LONG, ood_texts, save_model, write_csv, write_jsonl
from tests.support.text import tiny_bert_classifier, tiny_sentences

CHECKS = ["--check", "clean", "--check", "ood-basic", "--check", "adversarial"]


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-text-cli")
    save_model(d / "model")
    texts, labels = tiny_sentences(30, seed=4)
    write_csv(d / "data.csv", texts, labels)
    write_csv(d / "long.csv", [*texts[:20], LONG, LONG], [*labels[:20], 1, 0])
    write_csv(d / "columns.csv", texts, labels, text="sentence", label="y")
    write_csv(d / "columns_ood.csv", ood_texts(12, seed=6), text="sentence")
    write_jsonl(d / "ood.jsonl", ood_texts(16, seed=5))
    write_csv(d / "bad_label.csv", texts, [*labels[:-1], 5])
    write_csv(d / "empty.csv", [*texts[:-1], ""], labels)
    (d / "latin1.csv").write_bytes("text,label\ncaf\xe9 was good,1\n".encode("latin-1") * 12)
    # a folder without weights, one without a tokenizer, one whose tokenizer is larger than its embeddings
    save_model(d / "no_weights")
    for f in (d / "no_weights").glob("*.safetensors"):
        f.unlink()
    tiny_bert_classifier().save_pretrained(d / "no_tokenizer")
    small = tiny_bert_classifier()
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**{**small.config.to_dict(), "vocab_size": 20})
    BertForSequenceClassification(config).save_pretrained(d / "mismatch")
    small.tokenizer.save_pretrained(d / "mismatch")
    from transformers import BertModel  # a bare encoder: its folder has no classifier head

    BertModel(small.config).save_pretrained(d / "bare")
    small.tokenizer.save_pretrained(d / "bare")
    return d


def run(d, *args, db_name="runs.sqlite"):
    db = d / db_name
    if db.exists():
        db.unlink()
    result = CliRunner().invoke(main, ["audit", *args, "--db", str(db), "--report", ""])
    return result, db


def runs_in(db):
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] if db.exists() else 0


def test_a_model_folder_with_csv_and_jsonl_is_audited(d):
    result, db = run(d, "--model", str(d / "model"), "--data", str(d / "data.csv"), "--ood", str(d / "ood.jsonl"),
                     "--quick", "--json", *CHECKS)  # fmt: skip
    assert result.exit_code == 0, result.output
    keys = {
        r[0] for r in sqlite3.connect(db).execute("SELECT check_name || '/' || hazard || '/' || metric FROM results")
    }
    adversarial = "adversarial/text-adversarial/deepwordbug/attack_success_rate"  # the text attack (issue 14)
    assert {"clean/clean/accuracy", "ood-basic/ood/ood/auroc", adversarial} <= keys
    assert "warning" not in result.output


def test_truncated_texts_give_a_warning_line_and_rows(d):
    result, db = run(d, "--model", str(d / "model"), "--data", str(d / "long.csv"), "--ood", str(d / "ood.jsonl"),
                     "--quick", "--json", "--check", "clean")  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "(64 tokens) were truncated: clean" in warning[0], result.output
    (n,) = sqlite3.connect(db).execute("SELECT value FROM results WHERE metric = 'truncated_inputs'").fetchone()
    assert 1 <= n <= 2


def test_text_columns_are_named_by_options(d):
    """The column options apply to every text file of the audit (test, validation, training, OOD)."""
    result, _ = run(d, "--model", str(d / "model"), "--data", str(d / "columns.csv"),
                    "--ood", str(d / "columns_ood.csv"), "--text-column", "sentence", "--label-column", "y",
                    "--quick", "--check", "clean")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_gate_on_a_text_metric_fails_the_command(d):
    result, db = run(d, "--model", str(d / "model"), "--data", str(d / "data.csv"), "--ood", str(d / "ood.jsonl"),
                     "--quick", "--check", "clean", "--fail-under", "clean/clean/accuracy=1.0")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "gate failed: clean/clean/accuracy" in result.output
    assert runs_in(db) == 1


M, DATA = ["--model", "{d}/model"], ["--data", "{d}/data.csv"]
CASES = {
    "folder without weights": (
        ["--model", "{d}/no_weights", *DATA],
        "has no weights (.safetensors)",
    ),
    "folder without a tokenizer": (["--model", "{d}/no_tokenizer", "--data", "{d}/data.csv"], "has no tokenizer"),
    "tokenizer larger than the embeddings": (
        ["--model", "{d}/mismatch", "--data", "{d}/data.csv"],
        "the tokenizer has 87 tokens but the model's embedding table has 20 rows",
    ),
    "no data for a text model outside the zoo": (["--model", "{d}/model"], "give its test data with --data"),
    "image data for a text model": (
        ["--model", "{d}/model", "--data", "digits"],
        "holds images but the model takes text",
    ),
    "missing text column": (
        ["--model", "{d}/model", "--data", "{d}/data.csv", "--text-column", "body"],
        "no column 'body' (found ['text', 'label']); pass --text-column naming the column",
    ),
    "label outside [0, K)": (["--model", "{d}/model", "--data", "{d}/bad_label.csv"], "5"),
    "empty text": (["--model", "{d}/model", "--data", "{d}/empty.csv"], "empty"),
    "non-UTF-8 file": (["--model", "{d}/model", "--data", "{d}/latin1.csv"], "UTF-8"),
    "image size for a text model": (
        ["--model", "{d}/model", *DATA, "--image-size", "32", "32"],
        "--image-size sets how image folders are read, but the model takes text; drop it",
    ),
    "channels for a text model": (["--model", "{d}/model", *DATA, "--channels", "3"], "--channels sets how image"),
    "text column for an image model": (["--text-column", "body"], "names a column of text data, but the model takes"),
    "missing file": (["--model", "{d}/model", "--data", "{d}/nope.csv"], "not found or not supported"),
    "bare encoder without a classifier head": (
        ["--model", "{d}/bare", *DATA],
        "has no trained weights for classifier.bias, classifier.weight: it is not a saved sequence classifier",
    ),
    "zoo sentence encoder": (["--model", "minilm"], "zoo model 'minilm' is an encoder (it returns embeddings), not"),
    "zoo sentence encoder with text data": (["--model", "minilm", "--data", "mr"], "'minilm' is an encoder"),
    "zoo causal LM with a reward but no gold": (["--model", "smollm2-135m", "--reward", "r.py:f"], "--gold is missing"),
    "empty data": (["--model", "{d}/model", "--data", ""], "--data is empty; give a zoo dataset name"),
    "image-only detector": (
        ["--model", "{d}/model", "--data", "{d}/data.csv", "--ood", "{d}/ood.jsonl", "--config", "{d}/odin.toml"],
        "detector 'odin' does not work on text models",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_text_input_exits_2_with_one_line_and_stores_nothing(d, case):
    (d / "odin.toml").write_text('checks = ["ood"]\n[params.ood]\ndetectors = ["msp", "odin"]\ndefault = "msp"\n')
    args, needle = CASES[case]
    result, db = run(d, *[a.format(d=d) for a in args], db_name=f"bad-{abs(hash(case))}.sqlite")
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], lines[0]
    assert runs_in(db) == 0


def test_the_truncation_warning_names_the_length_texts_are_cut_to(d):
    # the tokenizer claims 512 tokens, the model has 64 positions: texts are cut at 64, and the
    # warning line and the row's max_length say 64 (they used to repeat the tokenizer's 512)
    import json

    from tests.support.text import tiny_tokenizer

    folder = d / "claims512"
    model = tiny_bert_classifier(num_labels=2, seed=0)
    model.save_pretrained(folder)
    tiny_tokenizer(max_length=512).save_pretrained(folder)
    result, db = run(d, "--model", str(folder), "--data", str(d / "long.csv"), "--quick", "--json", "--check", "clean",
                     db_name="claims512.sqlite")  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "(64 tokens)" in warning[0], result.output
    (params,) = (
        sqlite3.connect(db).execute("SELECT params_json FROM results WHERE metric = 'truncated_inputs'").fetchone()
    )
    assert json.loads(params)["max_length"] == 64
