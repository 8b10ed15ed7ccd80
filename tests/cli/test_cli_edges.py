"""The command line's edges (issue 12, point 4): literal user text, run ids, --db anywhere, output paths
checked before the first task, unfinished runs said to be unfinished, the device index kept."""

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from mlsafety.audit import Row, Store
from mlsafety.cli import main
from tests.cli.cli_support import one_error_line as _one_line


def _runs(db):
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT run_id, status FROM runs").fetchall()
    finally:
        con.close()


# -- literal text -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x[/].npz", "[bold]x[/bold].npz", "a[red]b.npz"])
def test_brackets_in_paths_are_printed_literally(tmp_path, name):
    db = tmp_path / "runs.sqlite"
    result = CliRunner().invoke(main, ["audit", "--data", str(tmp_path / name), "--db", str(db)])
    _one_line(result, str(tmp_path / name))
    assert _runs(db) == []


def test_config_errors_keep_their_brackets(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[fail_under]\n"clean/clean/accuracy" = "high"\n')
    result = CliRunner().invoke(main, ["audit", "--config", str(config), "--db", str(tmp_path / "r.sqlite")])
    _one_line(result, "[fail_under]")


def test_an_audit_on_bracketed_paths_runs_and_lists_them(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "[data]" / ("deep-folder-name-" * 4)
    folder.mkdir(parents=True)
    (folder / "x[").mkdir()
    data = folder / "x[/].npz"
    x = rng.random((30, 1, 8, 8)).astype(np.float32)
    np.savez(data, x=x, y=rng.integers(0, 10, 30))
    db = tmp_path / "r[1].sqlite"
    report = tmp_path / "[rep].html"
    ok = CliRunner().invoke(
        main,
        ["audit", "--data", str(data), "--ood", "noise", "--check", "clean", "--db", str(db), "--report", str(report)],
    )
    assert ok.exit_code == 0, ok.output
    assert f"Report: {report}" in ok.output
    listing = CliRunner().invoke(main, ["runs", "--db", str(db)])
    ((run_id, _),) = _runs(db)
    assert listing.exit_code == 0 and run_id in listing.output and str(data) in listing.output  # never cut


# -- run ids ----------------------------------------------------------------------------------------
def _store_with(db, run_ids):
    with Store(db) as store:
        for run_id in run_ids:
            store.conn.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, 1.0, 2.0, "complete", "digits-cnn", "digits", 0, "f", "{}", "0"),
            )
        row = Row("clean", "accuracy", 0.5, 0.4, 0.6, 100)
        store.write_task("20260101-000000-aaaaaa", "clean", "clean", [row], [], 1.0)
    return db


@pytest.fixture
def two_runs(tmp_path):
    return _store_with(tmp_path / "runs.sqlite", ["20260101-000000-aaaaaa", "20260101-000000-aaaabb"])


def test_ambiguous_prefix_lists_the_matches(two_runs):
    result = CliRunner().invoke(main, ["runs", "show", "20260101-000000-aaaa", "--db", str(two_runs)])
    _one_line(
        result,
        "run id '20260101-000000-aaaa' is ambiguous: it starts 2 runs",
        "20260101-000000-aaaaaa",
        "20260101-000000-aaaabb",
    )


@pytest.mark.parametrize("run_id", ["%", "_", "2026%", "20260101_000000"])
def test_like_wildcards_match_literally(tmp_path, run_id):
    """With one run stored, a LIKE pattern would find it; a literal prefix must not."""
    db = _store_with(tmp_path / "one.sqlite", ["20260101-000000-aaaaaa"])
    result = CliRunner().invoke(main, ["runs", "show", run_id, "--db", str(db)])
    _one_line(result, f"no run {run_id!r}")


def test_empty_run_id_is_refused(two_runs):
    for args in (["runs", "show", ""], ["report", ""], ["compare", "", "latest"], ["fmea", " "]):
        _one_line(CliRunner().invoke(main, [*args, "--db", str(two_runs)]), "the run id is empty")


def test_unique_prefix_and_db_anywhere(two_runs):
    for args in (
        ["runs", "show", "20260101-000000-aaaaa", "--db", str(two_runs), "--json"],
        ["runs", "--db", str(two_runs), "show", "20260101-000000-aaaaa", "--json"],
        ["runs", "show", "--db", str(two_runs), "--json", "20260101-000000-aaaaa"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)[0]["key"] == "clean/clean/accuracy"


# -- unfinished runs ------------------------------------------------------------------------------
def test_unfinished_run_is_said_to_be_unfinished(tmp_path):
    db = tmp_path / "runs.sqlite"
    with Store(db) as store:
        run_id = store.create_run("digits-cnn", "digits", 0, "f", {"quick": True}, "0")
        store.write_task(run_id, "clean", "clean", [Row("clean", "accuracy", 0.5, 0.4, 0.6, 100)], [], 1.0)
        store.finish_run(run_id, status="interrupted")
    out = tmp_path / "r.html"
    written = CliRunner().invoke(main, ["report", run_id, "--db", str(db), "--out", str(out)])
    assert written.exit_code == 0 and f"warning: run {run_id} is not complete" in written.output
    compared = CliRunner().invoke(main, ["compare", run_id, run_id, "--db", str(db)])
    assert compared.exit_code == 0 and compared.output.count(f"warning: run {run_id} is not complete") == 1
    html = out.read_text()
    assert 'id="unfinished"' in html and "Unfinished run (interrupted)" in html
    assert "Only 1 task of this audit is stored" in html
    shown = CliRunner().invoke(main, ["runs", "show", run_id, "--db", str(db)])
    assert shown.exit_code == 0
    assert f"warning: run {run_id} is not complete (status: interrupted): 1 tasks are stored" in shown.output
    with Store(db) as store:
        store.finish_run(run_id)
    CliRunner().invoke(main, ["report", run_id, "--db", str(db), "--out", str(out)])
    assert 'id="unfinished"' not in out.read_text()


# -- output paths and the database, checked before the first task ------------------------------------
def test_report_path_problems_are_found_before_the_run(tmp_path):
    db = tmp_path / "runs.sqlite"
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = {
        str(tmp_path / "file" / "r.html"): f"{tmp_path / 'file'} is not a folder",
        str(tmp_path / "folder"): "is a directory",
    }
    for report, needle in cases.items():
        result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(db), "--report", report])
        _one_line(result, needle, "--report")
    assert _runs(db) == []


def test_database_path_problems_are_refused(tmp_path):
    (tmp_path / "folder.sqlite").mkdir()
    for db, needle in (
        (tmp_path / "folder.sqlite", "is a directory"),
        (tmp_path / "missing" / "r.sqlite", "does not exist"),
    ):
        result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(db), "--report", ""])
        _one_line(result, needle)
    result = CliRunner().invoke(main, ["runs", "--db", str(tmp_path / "none.sqlite")])
    _one_line(result, "results database not found")
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates a database


def test_device_index_is_kept_in_the_message(tmp_path):
    import torch

    if torch.cuda.device_count() > 5:  # pragma: no cover
        pytest.skip("this machine has a cuda:5")
    result = CliRunner().invoke(main, ["audit", "--check", "clean", "--device", "cuda:5", "--db", str(tmp_path / "r")])
    _one_line(result, "device 'cuda:5' requested")
    assert _runs(tmp_path / "r") == []


def test_ctrl_c_in_any_command_exits_130_not_the_gate_code(two_runs, monkeypatch):
    """Click turns KeyboardInterrupt into 'Aborted!' and exit 1, the gate-failure code; we do not."""

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "runs", interrupted)
    result = CliRunner().invoke(main, ["runs", "--db", str(two_runs)])
    assert result.exit_code == 130
    assert result.output.strip() == "interrupted: stopped by SIGINT"


NAN_MODEL = """
from torch import nn


class NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def nan():
    return NaN()
"""


@pytest.mark.parametrize(
    "command", [["ood", "eval"], ["certify", "--inputs", "2", "--n", "10"], ["explain", "sanity", "--inputs", "2"]]
)
def test_other_commands_validate_like_the_audit(tmp_path, command):
    """ood eval, certify and explain sanity go through the audit's one validation layer."""
    (tmp_path / "m.py").write_text(NAN_MODEL)
    result = CliRunner().invoke(main, [*command, "--model", f"{tmp_path}/m.py:nan"])
    _one_line(result, "NaN or infinite logits", "probe inputs")
