"""The `mlsafety ood` commands: thin wrappers over the library."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mlsafety.cli import main
from mlsafety.monitoring import ood


def test_ood_list_shows_every_detector() -> None:
    result = CliRunner().invoke(main, ["ood", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ood.available():
        assert name in result.output


def test_ood_eval_json_matches_the_library() -> None:
    args = ["ood", "eval", "-d", "msp", "-d", "knn", "--ood", "noise", "--n-boot", "20", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"noise"} and set(out["noise"]) == {"msp", "knn"}
    from mlsafety import zoo

    model = zoo.load_model("digits-cnn")
    want = ood.evaluate(["msp"], model, zoo.load_dataset("digits", "train"), zoo.load_dataset("digits", "test").x,
                        {"noise": zoo.load_dataset("noise").x}, n_boot=20, seed=0)  # fmt: skip
    assert out["noise"]["msp"]["auroc"]["value"] == want["noise"]["msp"]["auroc"].value


def test_ood_eval_unknown_detector_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(main, ["ood", "eval", "-d", "enrgy"])
    assert result.exit_code == 2
    assert "unknown detector 'enrgy'" in result.output and "energy" in result.output
