"""The thin CLI commands ``mlsafety certify`` and ``mlsafety explain``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mlsafety.cli import main


def test_certify_prints_json_and_rejects_a_classifier_as_denoiser() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["certify", "--inputs", "4", "--n0", "20", "--n", "100", "--radius", "0", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["inputs"] == 4 and data["rows"][0]["radius"] == 0.0 and data["mean_samples"] == 100
    bad = runner.invoke(main, ["certify", "--inputs", "2", "--n", "10", "--denoiser", "digits-cnn"])
    assert bad.exit_code == 2 and "denoiser must return" in bad.output


def test_explain_list_and_sanity() -> None:
    runner = CliRunner()
    listing = runner.invoke(main, ["explain", "list"])
    assert listing.exit_code == 0 and "integrated-gradients" in listing.output
    out = runner.invoke(main, ["explain", "sanity", "-m", "saliency", "--mode", "cascading", "--inputs", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["passed"] is True
    bad = runner.invoke(main, ["explain", "sanity", "-m", "salency"])
    assert bad.exit_code == 2 and "saliency" in bad.output
