"""``mlsafety ood eval`` on a text model: a saved transformers folder, CSV test data and a JSONL OOD set."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mlsafety.cli import main
from tests.audit.test_text_audit import ood_texts, save_model, write_csv, write_jsonl
from tests.support.text import tiny_sentences


def test_ood_eval_scores_text_sets_with_text_detectors(tmp_path):
    save_model(tmp_path / "model")
    texts, labels = tiny_sentences(40, seed=4)
    write_csv(tmp_path / "data.csv", texts, labels)
    write_jsonl(tmp_path / "ood.jsonl", ood_texts(16, seed=5))
    args = ["ood", "eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.csv")]
    result = CliRunner().invoke(
        main, [*args, "--ood", str(tmp_path / "ood.jsonl"), "-d", "msp", "-d", "knn", "--n-boot", "20", "--json"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.output)
    assert set(out) == {"ood"} and set(out["ood"]) == {"msp", "knn"}
    for metrics in out["ood"].values():
        assert 0.0 <= metrics["auroc"]["value"] <= 1.0 and metrics["auroc"]["n"] > 16
    # an image-only detector is refused on a text model with one line
    bad = CliRunner().invoke(main, [*args, "--ood", str(tmp_path / "ood.jsonl"), "-d", "odin"])
    assert bad.exit_code == 2 and "does not work on text models" in bad.output


def test_ood_eval_reads_the_text_and_label_columns_it_is_given(tmp_path):
    """A data file whose columns are not text/label was refused with a hint to pass --text-column, which
    `ood eval` did not take; it takes --text-column and --label-column as `audit` and `attack-text` do."""
    save_model(tmp_path / "model")
    texts, labels = tiny_sentences(40, seed=4)
    write_csv(tmp_path / "data.csv", texts, labels, text="sentence", label="y")
    write_csv(tmp_path / "ood.csv", ood_texts(16, seed=5), text="sentence")
    args = ["ood", "eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.csv"),
            "--ood", str(tmp_path / "ood.csv"), "-d", "msp", "--n-boot", "20", "--json"]  # fmt: skip
    hint = CliRunner().invoke(main, args)
    assert hint.exit_code == 2 and "pass --text-column" in hint.output, hint.output
    result = CliRunner().invoke(main, [*args, "--text-column", "sentence", "--label-column", "y"])
    assert result.exit_code == 0, (result.output, result.exception)
    # every text was read: the 40 labelled ones less the 30% (12) held out for validation, and the 16 OOD ones
    assert json.loads(result.output)["ood"]["msp"]["auroc"]["n"] == 40 - 12 + 16
