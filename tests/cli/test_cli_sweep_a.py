"""Bad values found by a sweep of audit, runs, report, guard export, serve and zoo: each is one line and exit 2,
before any work, and nothing is written (the results database above all)."""

import socket

import pytest
from click.testing import CliRunner

from mlsafety.audit import Store
from mlsafety.cli import main
from tests.cli.cli_support import one_error_line

AUDIT = ["audit", "--check", "clean", "--max-samples", "20"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A results database holding one small clean run."""
    path = tmp_path_factory.mktemp("sweep") / "runs.sqlite"
    result = CliRunner().invoke(main, [*AUDIT, "--db", str(path), "--report", ""])
    assert result.exit_code == 0, result.output
    return path


def _run_count(path):
    with Store(path, create=False, readonly=True) as store:
        return len(store.runs())


def test_report_over_its_own_database_is_refused(db):
    """`report --out` naming the database it reads wrote the HTML over it: every stored run was lost."""
    result = CliRunner().invoke(main, ["report", "latest", "--db", str(db), "--out", str(db)])
    one_error_line(result, "--out", "is the results database", "path/to/report.html")
    assert _run_count(db) == 1


def test_audit_report_over_the_database_is_refused(tmp_path, db):
    """`audit --report` naming --db replaced the database with the report after the audit (exit 0)."""
    copy = tmp_path / "runs.sqlite"
    copy.write_bytes(db.read_bytes())
    result = CliRunner().invoke(main, [*AUDIT, "--db", str(copy), "--report", str(copy)])
    one_error_line(result, "--report", "is the results database")
    assert _run_count(copy) == 1  # no new run either: refused before work


def test_audit_report_over_the_default_database_is_refused(tmp_path, db, monkeypatch):
    """Without --db the database is $MLSAFETY_DB; a --report naming it is refused the same way."""
    copy = tmp_path / "env.sqlite"
    copy.write_bytes(db.read_bytes())
    monkeypatch.setenv("MLSAFETY_DB", str(copy))
    result = CliRunner().invoke(main, [*AUDIT, "--report", str(copy)])
    one_error_line(result, "is the results database")
    assert _run_count(copy) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["guard", "export", "latest", "--out", ""],  # wrote a guard into the current folder, exit 0
        ["runs", "show", "latest", "--db", ""],  # read ./mlsafety-runs.sqlite instead
        ["runs", "--db", ""],
        ["report", "latest", "--out", ""],
        ["zoo", "train", "digits-cnn", "--out", ""],
        ["zoo", "install-assets", "--dest", ""],
        ["audit-many", "digits-cnn", "--report-dir", ""],
    ],
    ids=["guard-export-out", "runs-show-db", "runs-db", "report-out", "zoo-train-out", "zoo-dest", "audit-many-dir"],
)
def test_an_empty_path_is_refused(tmp_path, monkeypatch, db, args):
    """An empty path (an unset shell variable) is named as empty, not taken as the current folder."""
    monkeypatch.chdir(tmp_path)
    argv = [*args, "--db", str(db)] if args[0] == "guard" else args
    result = CliRunner().invoke(main, argv)
    one_error_line(result, "the path is empty")
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_an_unknown_device_before_loading(tmp_path):
    """`serve --device nope` ended in torch's RuntimeError traceback (exit 1) after loading the model."""
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", "0", "--device", "nope"])
    one_error_line(result, "unknown device 'nope'", "cpu, cuda or cuda:N")


def test_serve_refuses_a_port_in_use_before_loading(tmp_path):
    """A port in use was reported by uvicorn after the guard was loaded, with exit 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", str(port)])
    one_error_line(result, f"cannot bind 127.0.0.1:{port}", "--port")


def test_serve_refuses_an_empty_host(tmp_path):
    """`--host ""` made uvicorn bind every interface."""
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", "0", "--host", ""])
    one_error_line(result, "--host is empty", "--host 127.0.0.1")


def test_serve_refuses_an_endless_batching_window(tmp_path):
    """--max-wait-ms 1e20 was taken: a request waited for others to fill its batch (for ever)."""
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--max-wait-ms", "1e20"])
    one_error_line(result, "--max-wait-ms")


@pytest.mark.parametrize("command", [["audit", "--model", ""], ["audit-many", ""]], ids=["audit", "audit-many"])
def test_an_empty_model_is_named_as_empty(tmp_path, command):
    """`--model ""` was read as a model folder: 'a model folder needs config.json; save_pretrained...'."""
    result = CliRunner().invoke(main, [*command, "--check", "clean", "--db", str(tmp_path / "r.sqlite")])
    one_error_line(result, "--model is empty", "zoo model name")
    assert not (tmp_path / "r.sqlite").exists() or _run_count(tmp_path / "r.sqlite") == 0


def test_ood_detector_without_the_ood_check_names_the_flag(tmp_path):
    """--ood-detector with --check clean said 'parameters given for check 'ood'', naming no flag of the command."""
    result = CliRunner().invoke(main, [*AUDIT, "--ood-detector", "knn", "--db", str(tmp_path / "r.sqlite")])
    one_error_line(result, "--ood-detector", "--check ood")
    assert not (tmp_path / "r.sqlite").exists()
