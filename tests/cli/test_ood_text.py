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
