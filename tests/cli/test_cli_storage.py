"""Storage errors are one line and exit 2, never a traceback or a 'running' row (issue 12, point 4).

A full disk is simulated through SQLite's own limit (``PRAGMA max_page_count``: SQLite then fails
with the very error of a full disk, ``database or disk is full``), a read-only file through
``PRAGMA query_only``, damaged pages by overwriting the file's bytes. Read-only files and folders are
also tested for real: the commands run in a subprocess without the capability that lets root ignore
file permissions (tests here run as root), so SQLite meets the same refusals a normal user would.
"""

import ctypes
import errno
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.audit import Row, Store
from mlsafety.audit._store import storage_error
from mlsafety.cli import main
from tests.cli.cli_support import one_error_line as _one_line

_REAL_CONNECT = sqlite3.connect


def _statuses(db):
    con = _REAL_CONNECT(db)
    try:
        return [s for (s,) in con.execute("SELECT status FROM runs")]
    finally:
        con.close()


def _limit_connections(monkeypatch, pragma, extra=0):
    """Every new SQLite connection of this process runs ``pragma`` first (``{n}``: its page count + extra)."""

    def connect(*args, **kwargs):
        con = _REAL_CONNECT(*args, **kwargs)
        n = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(pragma.format(n=n + extra))
        return con

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.parametrize("extra_pages", [0, 3])
def test_full_disk_during_the_audit(tmp_path, monkeypatch, extra_pages):
    """The database cannot grow: one line, no traceback, and a stored run is resumable.

    Marking the run 'failed' writes to the full database too. Here it fits; on a GPU machine's file system
    (gVisor) even that write failed and the run stayed 'running', or the run itself was not stored: both are
    states --resume or a fresh audit recover from, so both are accepted."""
    db = tmp_path / "runs.sqlite"
    Store(db).close()
    _limit_connections(monkeypatch, "PRAGMA max_page_count={n}", extra_pages)
    result = CliRunner().invoke(
        main, ["audit", "--check", "clean", "--check", "calibration-basic", "--db", str(db), "--report", ""]
    )
    line = _one_line(result, f"the disk holding {db} is full (database or disk is full)")
    assert "Traceback" not in result.output
    monkeypatch.undo()
    statuses = _statuses(db)
    assert statuses in ([], ["failed"], ["running"])
    if statuses:
        assert "tasks: continue it with --resume once fixed" in line
        args = ["audit", "--check", "clean", "--check", "calibration-basic", "--db", str(db), "--report", ""]
        resumed = CliRunner().invoke(main, [*args, "--resume", "--json"])
        assert resumed.exit_code == 0, resumed.output
        assert _statuses(db) == ["complete"]
    else:
        assert "--resume" not in line


def test_read_only_database_is_refused_before_the_run(tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    Store(db).close()
    _limit_connections(monkeypatch, "PRAGMA query_only=1")
    result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(db), "--report", ""])
    _one_line(result, f"results database {db} is read-only", "make it writable, or pass another --db")
    monkeypatch.undo()
    assert _statuses(db) == []


def _database_with_rows(path, n=3000):
    store = Store(path)
    run_id = store.create_run("digits-cnn", "digits", 0, "f", {"quick": True}, "0")
    rows = [Row("clean", f"m_{i}", float(i), kind="count") for i in range(n)]
    store.write_task(run_id, "clean", "clean", rows, [], 1.0)
    store.finish_run(run_id)
    store.close()
    return run_id


def test_damaged_pages_in_runs_show_and_report(tmp_path):
    db = tmp_path / "runs.sqlite"
    _database_with_rows(db)
    data = bytearray(db.read_bytes())
    for offset in range(len(data) // 2, len(data) - 4096, 4096):  # the results pages, not the schema page
        data[offset + 8 : offset + 200] = b"\xff" * 192
    db.write_bytes(bytes(data))
    for args in (["runs", "show", "latest"], ["report", "latest", "--out", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(main, [*args, "--db", str(db)])
        _one_line(result, f"results database {db} is damaged (database disk image is malformed)")
    assert not list(tmp_path.glob("*.html*"))


def test_full_disk_while_writing_the_report_leaves_no_partial_file(tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    _database_with_rows(db, n=5)
    out = tmp_path / "r.html"
    real_write = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", half_then_full)
    result = CliRunner().invoke(main, ["report", "latest", "--db", str(db), "--out", str(out)])
    _one_line(result, f"cannot write the report to {out}: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir() if "html" in p.name) == []


def test_storage_messages_name_the_problem_and_the_fix():
    path = Path("x.sqlite")
    cases = {
        "database or disk is full": "is full",
        "attempt to write a readonly database": "is read-only",
        "unable to open database file": "cannot open",
        "database disk image is malformed": "is damaged",
        "database is locked": "is locked by another process",
        "disk I/O error": "cannot be read or written",
        "something new": "failed (something new)",
    }
    for text, needle in cases.items():
        message = str(storage_error(path, sqlite3.OperationalError(text)))
        assert needle in message and text in message and "\n" not in message


def test_read_only_folder_uses_immutable_mode(tmp_path, monkeypatch):
    """Where the folder cannot be written, reading opens the file immutable (no -wal/-shm needed)."""
    db = tmp_path / "runs [1] #%.sqlite"
    _database_with_rows(db, n=5)
    import mlsafety.audit._store as store_module

    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)
    store = Store(db, create=False, readonly=True)
    try:
        assert store._readonly_uri().endswith("?mode=ro&immutable=1")
        assert [r.status for r in store.runs()] == ["complete"]
    finally:
        store.close()
    assert not Path(str(db) + "-wal").exists()


# -- real permissions ------------------------------------------------------------------------------
_SCRIPT = """
import json, sys
from click.testing import CliRunner
from mlsafety.cli import main
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args)
    out.append([r.exit_code, r.output, repr(r.exception) if r.exit_code not in (0, 1, 2) else None])
print(json.dumps(out))
"""


def _without_root_powers():
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root meets file permissions like a user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(commands):
    preexec = _without_root_powers if os.geteuid() == 0 else None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, json.dumps(commands)],
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.SubprocessError as exc:  # pragma: no cover - prctl refused in this container
        pytest.skip(f"cannot drop root's file powers here: {exc}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="drops Linux capabilities to test real permissions")
def test_real_read_only_folder_and_files(tmp_path):
    """Read-only folder and file: every reading command works; writing ones refuse before a run exists."""
    ro = tmp_path / "ro"
    ro.mkdir()
    db = ro / "runs.sqlite"
    ok = CliRunner().invoke(
        main, ["audit", "--check", "clean", "--db", str(db), "--report", str(tmp_path / "first.html"), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    run_id = json.loads(ok.output)["run_id"]
    writable = tmp_path / "out"
    writable.mkdir()
    db.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        results = _run_unprivileged(
            [
                ["runs", "--db", str(db)],
                ["runs", "show", run_id, "--db", str(db), "--json"],
                ["report", run_id, "--db", str(db), "--out", str(writable / "r.html")],
                ["compare", run_id, "latest", "--db", str(db), "--all"],
                ["fmea", "latest", "--db", str(db)],
                ["audit", "--check", "clean", "--db", str(db), "--report", str(writable / "x.html")],
                ["audit", "--check", "clean", "--db", str(writable / "w.sqlite"), "--report", str(ro / "r.html")],
                ["report", run_id, "--db", str(db), "--out", str(ro / "r.html")],
            ]
        )
    finally:
        ro.chmod(stat.S_IRWXU)
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)
    (listing, show, report, compare, fmea, audit_ro_db, audit_ro_report, report_ro) = results
    assert listing[0] == 0 and run_id in listing[1]
    assert show[0] == 0 and {r["key"] for r in json.loads(show[1])} >= {"clean/clean/accuracy"}
    assert report[0] == 0 and (writable / "r.html").exists()
    assert compare[0] == 0 and "shared metrics" in compare[1]
    assert fmea[0] == 2 and "has no FMEA rows" in fmea[1]  # opened and read; the run has no FMEA table
    for code, output, exc in (audit_ro_db, audit_ro_report, report_ro):
        assert code == 2 and exc is None, output
        assert len(output.strip().splitlines()) == 1 and output.startswith("error: "), output
    assert "read-only" in audit_ro_db[1] or "cannot open" in audit_ro_db[1]
    assert f"cannot write the report to {ro / 'r.html'}: folder {ro} is not writable" in audit_ro_report[1]
    assert "cannot write the report" in report_ro[1]
    assert _statuses(db) == ["complete"]  # nothing was added to the read-only database
    assert not (writable / "w.sqlite").exists() or _statuses(writable / "w.sqlite") == []
    assert not list(ro.glob("*.html*")) and not list(ro.glob("*-wal"))


def test_full_disk_while_the_audit_writes_its_report(tmp_path, monkeypatch):
    """The numbers are stored and the run complete; the line says how to write the report later."""
    db = tmp_path / "runs.sqlite"
    out = tmp_path / "r.html"
    real_write = Path.write_text

    def full(self, text, *args, **kwargs):
        real_write(self, text[:100], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(db), "--report", str(out)])
    line = _one_line(result, f"cannot write the report to {out}: No space left on device", "is complete and stored")
    assert "mlsafety report " in line
    assert _statuses(db) == ["complete"]
    assert not list(tmp_path.glob("*.html*"))


def test_reading_commands_cannot_write_and_leave_no_files(tmp_path):
    db = tmp_path / "runs.sqlite"
    _database_with_rows(db, n=5)
    store = Store(db, create=False, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.conn.execute("DELETE FROM results")
    finally:
        store.close()
    for args in (["runs"], ["runs", "show", "latest"], ["compare", "latest", "latest"]):
        assert CliRunner().invoke(main, [*args, "--db", str(db)]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]


def test_a_transaction_sqlite_rolled_back_itself_reports_the_real_error(tmp_path):
    """After SQLITE_FULL mid-statement SQLite ends the transaction itself: the disk-full error must reach the user,
    not the "cannot rollback - no transaction is active" of a second ROLLBACK."""
    store = Store(tmp_path / "runs.sqlite")
    try:
        with pytest.raises(sqlite3.OperationalError, match="full"), store.transaction() as c:
            c.execute("ROLLBACK")  # what SQLite does on a full disk
            raise sqlite3.OperationalError("database or disk is full")
        assert not store.conn.in_transaction
        with pytest.raises(sqlite3.OperationalError, match="no such table"), store.transaction() as c:
            c.execute("INSERT INTO nowhere VALUES (1)")  # an error SQLite does not roll back: ours does
        assert not store.conn.in_transaction
    finally:
        store.close()
