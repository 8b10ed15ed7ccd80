import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main


def test_gates_json_runs_report_compare(tmp_path):
    db, runner = str(tmp_path / "runs.sqlite"), CliRunner()
    ok = runner.invoke(
        main,
        [
            "audit",
            "--check",
            "clean",
            "--db",
            db,
            "--json",
            "--report",
            str(tmp_path / "a.html"),
            "--fail-under",
            "clean/clean/accuracy=0.9",
        ],
    )
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.output)
    keys = {r["key"]: r for r in payload["results"]}
    assert keys["clean/clean/accuracy"]["ci_low"] <= keys["clean/clean/accuracy"]["value"]
    assert keys["clean/clean/accuracy"]["kind"] == "estimate"
    bad = runner.invoke(
        main,
        [
            "audit",
            "--check",
            "clean",
            "--db",
            db,
            "--report",
            str(tmp_path / "b.html"),
            "--fail-under",
            "clean/clean/accuracy=0.999",
            "--fail-over",
            "clean/*/class_0_accuracy=2",
        ],
    )
    assert bad.exit_code == 1 and "clean/clean/accuracy" in bad.output and "below the bound" in bad.output
    listing = runner.invoke(main, ["runs", "--db", db])
    assert listing.exit_code == 0 and payload["run_id"][:10] in listing.output
    shown = runner.invoke(main, ["runs", "--db", db, "show", payload["run_id"], "--json"])
    assert {r["key"] for r in json.loads(shown.output)} == set(keys)
    rebuilt = runner.invoke(main, ["report", payload["run_id"], "--db", db, "--out", str(tmp_path / "c.html")])
    assert rebuilt.exit_code == 0 and (tmp_path / "c.html").read_text() == (tmp_path / "a.html").read_text()
    cmp = runner.invoke(main, ["compare", payload["run_id"], "latest", "--db", db, "--all"])
    assert cmp.exit_code == 0 and "changed beyond their 95% intervals" in cmp.output


def test_killed_audit_resumes_without_recomputing(tmp_path):
    """SIGKILL a real audit once some tasks are stored; --resume finishes only what is missing."""
    db = tmp_path / "runs.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "mlsafety.cli",
        "audit",
        "--quick",
        "--db",
        str(db),
        "--report",
        str(tmp_path / "r.html"),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    stored: list[tuple[str, str, float]] = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                stored = sqlite3.connect(db).execute("SELECT check_name, task_key, seconds FROM tasks").fetchall()
            except sqlite3.OperationalError:
                continue
            if stored:
                break
    assert stored, "no task finished in time"
    if proc.poll() is not None:
        pytest.skip("the whole audit finished before it could be killed (a very fast machine)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    before = {(c, k): s for c, k, s in con.execute("SELECT check_name, task_key, seconds FROM tasks")}
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    con.close()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(db)
    after = {(c, k): s for c, k, s in con.execute("SELECT check_name, task_key, seconds FROM tasks")}
    assert con.execute("SELECT COUNT(*), MIN(status) FROM runs").fetchone() == (1, "complete")
    assert all(after[key] == secs for key, secs in before.items())  # stored tasks were not re-run
    assert len(after) > len(before)
    assert Path(tmp_path / "r.html").exists()
