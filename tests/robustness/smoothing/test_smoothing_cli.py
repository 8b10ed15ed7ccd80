"""The thin CLI commands ``mlsafety certify`` and ``mlsafety explain``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlsafety import zoo
from mlsafety.cli import main


def test_certify_prints_json_and_rejects_a_classifier_as_denoiser() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["certify", "--inputs", "4", "--n0", "20", "--n", "100", "--radius", "0", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["inputs"] == 4 and data["rows"][0]["radius"] == 0.0 and data["mean_samples"] == 100
    bad = runner.invoke(main, ["certify", "--inputs", "2", "--n", "10", "--denoiser", "digits-cnn"])
    # refused by name before any work (it was refused mid-run, when its output was not an image)
    assert bad.exit_code == 2 and "is not a zoo denoiser" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_explain_list_and_sanity() -> None:
    runner = CliRunner()
    listing = runner.invoke(main, ["explain", "list"])
    assert listing.exit_code == 0 and "integrated-gradients" in listing.output
    out = runner.invoke(main, ["explain", "sanity", "-m", "saliency", "--mode", "cascading", "--inputs", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["passed"] is True
    bad = runner.invoke(main, ["explain", "sanity", "-m", "salency"])
    assert bad.exit_code == 2 and "saliency" in bad.output


@pytest.mark.skipif(
    not all((zoo.fashion_mnist_dir() / n).is_file() for n in zoo.FASHION_MNIST_FILES),
    reason="Debian's dataset-fashion-mnist is not installed (make debs)",
)
def test_certify_a_zoo_model_on_its_own_data_by_default() -> None:
    """`certify --model fashion-cnn` took the digits (the fixed --data default) and was refused for their 8x8
    shape; a zoo model's default data is the set it was trained on, as in `mlsafety audit` and `ood eval`."""
    out = CliRunner().invoke(
        main, ["certify", "--model", "fashion-cnn", "--inputs", "2", "--n0", "5", "--n", "10", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["inputs"] == 2


def test_certify_refuses_a_text_model_in_one_line() -> None:
    """With the zoo model's own data as the default, a text model reached the smoothing with texts and failed
    with "inputs must be a float tensor"; it is refused naming the model and what certify takes."""
    out = CliRunner().invoke(main, ["certify", "--model", "minilm-mr", "--inputs", "2", "--n0", "5", "--n", "10"])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and "--model minilm-mr is a text classifier" in lines[0], out.output


@pytest.mark.parametrize(
    "args", [["certify", "--n0", "5", "--n", "10"], ["explain", "sanity", "-m", "saliency", "--mode", "cascading"]]
)
def test_a_small_npz_is_not_refused_for_a_validation_option_the_command_lacks(tmp_path, args) -> None:
    """certify and explain sanity read --data with the audit's checks, which hold out 30% as validation and
    refused an .npz of fewer than 10 inputs "or pass --val": neither command has --val nor uses a validation set."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "small.npz"
    np.savez(path, x=torch.rand(8, 1, 8, 8, generator=g).numpy(), y=torch.arange(8).numpy())
    out = CliRunner().invoke(main, [*args, "--data", str(path), "--inputs", "2"])
    assert out.exit_code == 0, out.output
