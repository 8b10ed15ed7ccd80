"""What a new user hit (issue 22): progress and estimates in CI, compare across profiles, `previous`,
an unavailable device, --budget / --max-samples on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlsafety.audit import Row, Store
from mlsafety.cli import main
from tests.cli.cli_support import one_error_line

MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((60, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 60))
    np.savez(tmp_path / "ood.npz", x=rng.random((20, 1, 8, 8)).astype(np.float32), y=-np.ones(20, dtype=np.int64))
    return tmp_path


def _audit(files, *extra):
    return [
        "audit", "--model", f"{files / 'm.py'}:small", "--data", str(files / "data.npz"),
        "--ood", str(files / "ood.npz"), "--check", "clean", "--db", str(files / "runs.sqlite"), "--report", "",
        *extra,
    ]  # fmt: skip


def test_without_a_terminal_progress_is_plain_lines_with_count_and_eta(files):
    result = CliRunner().invoke(main, _audit(files, "--check", "calibration-basic"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    estimate = next(line for line in lines if line.startswith("estimate:"))
    assert "with these checks" in estimate and "--budget" in estimate
    progress = [line for line in lines if line.startswith("[")]
    assert [p.split("]")[0] for p in progress] == ["[1/2", "[2/2"]
    assert all("left" in p and "done" in p for p in progress)
    # no --val: the held-out share is said in the summary
    assert any("18 of the 60 inputs of --data (30%) were held out as validation" in line for line in lines)


def test_json_mode_prints_only_json(files):
    result = CliRunner().invoke(main, _audit(files, "--json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert any(r["key"] == "audit-plan/validation/held_out_of_test" for r in payload["results"])


def test_keys_are_never_cut_when_not_on_a_terminal(files):
    result = CliRunner().invoke(main, _audit(files, "--budget", "1m", "--max-samples", "50"))
    assert result.exit_code == 0, result.output
    assert "Sample sizes under the budget: test inputs" in result.output
    shown = CliRunner().invoke(main, ["runs", "show", "latest", "--db", str(files / "runs.sqlite")])
    assert "audit-plan/clean/test_inputs_worst_interval_width" in shown.output  # longer than 40 columns, whole


@pytest.mark.parametrize("device", ["mps", "xla", "meta"])
def test_an_unavailable_device_is_one_line(files, device):
    one_error_line(CliRunner().invoke(main, _audit(files, "--device", device)), device, "cpu")


@pytest.mark.parametrize(
    ("flag", "value", "needle"), [("--budget", "soon", "duration"), ("--max-samples", "0", "max-samples")]
)
def test_bad_budget_settings_are_one_line(files, flag, value, needle):
    one_error_line(CliRunner().invoke(main, _audit(files, flag, value)), needle)


def _runs(tmp_path, configs, values):
    db = tmp_path / "runs.sqlite"
    ids = []
    with Store(db) as store:
        for config, value in zip(configs, values, strict=True):
            run = store.create_run("m", "d", 0, "f", config, "v")
            row = Row("clean", "accuracy", value, value - 0.01, value + 0.01, 100)
            store.write_task(run, "clean", "clean", [row], [], 0.1)
            store.finish_run(run)
            ids.append(run)
    return str(db), ids


def test_compare_across_profiles_names_the_settings_and_does_not_fail(tmp_path):
    """A quick run against a full one: the accuracy fell far beyond its intervals, but the profiles
    differ, so it is shown as 'settings', --fail-on-change exits 0, and --across-settings counts it."""
    full = {"quick": False, "seed": 0, "effective_params": {"clean": {"batch_size": 256}}}
    quick = {"quick": True, "seed": 0, "effective_params": {"clean": {"batch_size": 256}}}
    db, (a, b) = _runs(tmp_path, [full, quick], [0.9, 0.5])
    runner = CliRunner()
    out = runner.invoke(main, ["compare", a, b, "--db", db, "--fail-on-change"])
    assert out.exit_code == 0, out.output
    assert "different settings" in out.output and "quick: false -> true" in out.output
    assert "settings" in out.output and "0 worse" in out.output
    strict = runner.invoke(main, ["compare", a, b, "--db", db, "--fail-on-change", "--across-settings"])
    assert strict.exit_code == 1 and "1 worse" in strict.output


def test_compare_of_equal_settings_still_fails_on_a_regression(tmp_path):
    same = {"quick": False, "seed": 0, "effective_params": {"clean": {"batch_size": 256}}}
    db, (a, b) = _runs(tmp_path, [same, same], [0.9, 0.5])
    out = CliRunner().invoke(main, ["compare", a, b, "--db", db, "--fail-on-change"])
    assert out.exit_code == 1 and "different settings" not in out.output and "1 worse" in out.output


def test_a_check_parameter_that_differs_touches_only_that_check(tmp_path):
    from mlsafety.audit import settings_diff

    a = {"quick": False, "effective_params": {"clean": {"x": 1}, "adversarial": {"n": 200}}}
    b = {"quick": False, "effective_params": {"clean": {"x": 1}, "adversarial": {"n": 100}}}
    diff = settings_diff(a, b)
    assert diff.by_check == {"adversarial": ["n: 200 -> 100"]} and not diff.run_wide
    assert diff.affects("adversarial") and not diff.affects("clean")


def test_previous_names_the_run_before_latest(tmp_path):
    same = {"quick": False, "seed": 0}
    db, (a, b) = _runs(tmp_path, [same, same], [0.9, 0.9])
    out = CliRunner().invoke(main, ["compare", "previous", "latest", "--db", db, "--all"])
    assert out.exit_code == 0, out.output
    assert a in out.output and b in out.output
    with Store(db) as store:
        assert store.run("previous").run_id == a
    (tmp_path / "one").mkdir()
    db1, _ = _runs(tmp_path / "one", [same], [0.9])
    one_error_line(CliRunner().invoke(main, ["compare", "previous", "latest", "--db", db1]), "fewer than two runs")
