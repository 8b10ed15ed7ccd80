"""`mlsafety tta`: the table of accuracy with and without adaptation and attack success, and its refusals."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlsafety.cli import main
from tests.cli.cli_support import one_error_line


def test_tta_prints_accuracy_with_and_without_adaptation_and_attack_success():
    args = ["tta", "--method", "tebn", "--share", "0.1", "--objective", "indiscriminate", "--batch-size", "32",
            "--corruption", "contrast:3", "--batches", "3", "--steps", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    assert "accuracy, no adaptation" in out and "accuracy, tebn" in out and "data: contrast severity 3" in out
    assert "attack success (indiscriminate)" in out and "random inputs, same budget" in out
    assert "3 attacked batches of 32: 3 malicious" in out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.strip()}
    static = float(rows["accuracy, no adaptation"][-5])
    adapted = float(rows["accuracy, tebn"][-5])
    assert adapted > static + 0.2  # contrast shrinks the statistics TeBN re-estimates


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--share", "1.5"], ["--share", "(0, 1)"]),
        (["--share", "0"], ["--share", "(0, 1)"]),
        (["--batch-size", "1"], ["--batch-size", "at least 2"]),
        (["--method", "tnet"], ["unknown test-time adaptation method 'tnet'", "tent"]),
        (["--model", "digits-cnn"], ["no batch-norm layers", "digits-cnn-bn"]),
        (["--corruption", "fog:9"], ["NAME:SEVERITY"]),
        (["--eps", "2"], ["eps"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needles):
    one_error_line(CliRunner().invoke(main, ["tta", "--steps", "1", "--batches", "1", *args]), *needles)


def test_a_bad_eps_is_refused_before_the_model_and_data_are_prepared(monkeypatch):
    import mlsafety.audit

    def fail(*_a, **_k):
        raise AssertionError("prepare_inputs ran before --eps was checked")

    monkeypatch.setattr(mlsafety.audit, "prepare_inputs", fail)
    one_error_line(CliRunner().invoke(main, ["tta", "--eps", "-0.1"]), "eps")


def test_method_help_lists_every_method():
    """--method said `(tebn, tent, hard-pl, ...)`: soft-pl, alpha-bn and medbn were not named."""
    from mlsafety.robustness.tta import TTA_METHODS

    said = " ".join(CliRunner().invoke(main, ["tta", "--help"], terminal_width=400).output.split())
    assert "..." not in said.split("--method", 1)[1].split("--share")[0]
    assert all(name in said for name in TTA_METHODS.available())
