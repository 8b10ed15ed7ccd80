"""``mlsafety explain text`` and ``explain sanity`` on a saved tiny text classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.support.text import tiny_bert_classifier


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    model = tiny_bert_classifier(num_labels=2, seed=0)
    model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def test_explain_text_prints_words_with_scores(model_dir: Path) -> None:
    args = ["explain", "text", "--model", str(model_dir), "--text", "the movie was good", "--text", "a bad day"]
    out = CliRunner().invoke(main, [*args, "--method", "occlusion", "--target", "1", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert [[w["word"] for w in r["words"]] for r in res["results"]] == [
        ["the", "movie", "was", "good"],
        ["a", "bad", "day"],
    ]
    assert all(r["target"] == 1 for r in res["results"])
    plain = CliRunner().invoke(main, args, terminal_width=200)
    assert plain.exit_code == 0 and "integrated-gradients: the=" in plain.output


def test_explain_text_refuses_an_image_only_choice_with_one_line(model_dir: Path) -> None:
    out = CliRunner().invoke(main, ["explain", "text", "--model", "digits-cnn", "--text", "hello"])
    assert out.exit_code == 2 and "text model" in out.output
    out = CliRunner().invoke(main, ["explain", "text", "--model", str(model_dir), "--text", "hi", "-m", "salency"])
    assert out.exit_code == 2 and "saliency" in out.output
    out = CliRunner().invoke(main, ["explain", "text", "--model", str(model_dir), "--text", "good", "--target", "5"])
    assert out.exit_code == 2 and out.output.strip().splitlines() == [
        "error: --target 5 is not a class of this model (it has 2: 0..1)"
    ]


def test_explain_sanity_on_text_data(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    lines = ["the movie was good,1", "a bad day,0", "it is great,1", "that was awful,0"] * 3
    data.write_text("text,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    args = ["explain", "sanity", "--model", str(model_dir), "--data", str(data), "-m", "saliency", "--inputs", "4"]
    out = CliRunner().invoke(main, [*args, "--mode", "cascading", "--json"])
    assert out.exit_code == 0, out.output
    (res,) = json.loads(out.output)
    assert res["method"] == "saliency" and res["ssim"] is None and -1 <= res["spearman"] <= 1
