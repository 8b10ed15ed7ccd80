"""Bad input gets one clear line, exit code 2, and nothing written to the results database."""

import pickle
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from mlsafety.cli import main

MODEL = """
import torch
from torch import nn

def good():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

def bad_shape():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Unflatten(1, (3, 1)))

def not_a_module():
    return 42
"""


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=rng.integers(0, 3, 20))
    np.savez(tmp_path / "range.npz", x=x * 3, y=np.zeros(20, int))
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan, y=np.zeros(20, int))
    np.savez(tmp_path / "labels.npz", x=x, y=np.full(20, 7))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, int))
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"1.weight": _Evil()}, fh)
    (tmp_path / "corrupt.sqlite").write_bytes(b"garbage" * 200)
    con = sqlite3.connect(tmp_path / "foreign.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    return tmp_path


CASES = {
    "missing model file": (["--model", "{d}/nope.py:good"], "model file not found"),
    "missing weights": (["--model", "{d}/m.py:good", "--weights", "{d}/nope.safetensors"], "weights file not found"),
    "pickle that runs code": (["--model", "{d}/m.py:good", "--weights", "{d}/evil.pt"], "refused to load"),
    "factory returns no module": (["--model", "{d}/m.py:not_a_module"], "not a torch.nn.Module"),
    "output not (N, K)": (["--model", "{d}/m.py:bad_shape", "--data", "{d}/ok.npz", "--ood", "noise"], "(N, K)"),
    "inputs outside [0, 1]": (["--model", "{d}/m.py:good", "--data", "{d}/range.npz"], "[0, 1]"),
    "NaN inputs": (["--model", "{d}/m.py:good", "--data", "{d}/nan.npz"], "NaN"),
    "labels outside [0, K)": (["--model", "{d}/m.py:good", "--data", "{d}/labels.npz", "--ood", "noise"], "[0, 3)"),
    "empty dataset": (["--model", "{d}/m.py:good", "--data", "{d}/empty.npz"], "empty"),
    "missing data file": (["--data", "{d}/nope.npz"], "not found"),
    "unknown check": (["--check", "clean", "--check", "nope"], "unknown check 'nope'"),
    "malformed gate": (["--check", "clean", "--fail-under", "accuracy"], "METRIC=VALUE"),
    "gate on an unknown check": (["--check", "clean", "--fail-under", "nope/clean/accuracy=1"], "unknown check"),
    "unknown device": (["--check", "clean", "--device", "tpu9"], "device"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(files, case):
    args, needle = CASES[case]
    db = files / "runs.sqlite"
    result = CliRunner().invoke(main, ["audit", *[a.format(d=files) for a in args], "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "pwned" not in result.output
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


@pytest.mark.parametrize(("db", "needle"), [("corrupt.sqlite", "not a usable"), ("foreign.sqlite", "another program")])
def test_bad_database(files, db, needle):
    before = (files / db).read_bytes()
    result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(files / db)])
    assert result.exit_code == 2 and needle in " ".join(result.output.split())
    assert (files / db).read_bytes() == before
    assert CliRunner().invoke(main, ["runs", "--db", str(files / db)]).exit_code == 2


def test_unknown_gate_metric_and_run_ids(files):
    db = str(files / "runs.sqlite")
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "--check",
            "clean",
            "--db",
            db,
            "--report",
            str(files / "r.html"),
            "--fail-under",
            "clean/ood/nope/accuracy=0.5",  # a metric the check declares, on a hazard it never stores
        ],
    )
    assert result.exit_code == 2 and "matches no stored metric" in result.output, result.output
    for args in (["report", "nope"], ["runs", "show", "nope"], ["compare", "nope", "latest"]):
        out = CliRunner().invoke(main, [*args, "--db", db] if args[0] != "runs" else ["runs", "--db", db, *args[1:]])
        assert out.exit_code == 2 and "no run 'nope'" in out.output, out.output


def test_sanity_threshold_outside_a_rank_correlation_is_refused():
    """A threshold above 1 made every map count as changed (every test passed): one line, exit 2."""
    result = CliRunner().invoke(main, ["explain", "sanity", "--model", "digits-cnn", "--threshold", "5"])
    assert result.exit_code == 2 and "threshold" in result.output, result.output
    assert "pass" not in result.output
