"""SIGINT and SIGTERM stop an audit cleanly (issue 12, point 5), tested with real signals.

A real ``mlsafety audit`` runs in a subprocess on a model that is slow on purpose; once the results
database holds a finished task the test sends the signal, then checks the exit code (130 / 143, not
the gate-failure code 1), the one line naming how many tasks are stored and the exact command to
continue, a consistent store with a run that is not marked complete, and that the printed command
finishes the run without recomputing what was stored.
"""

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.cli.cli_support import slow_model_source, without_progress

SLOW = slow_model_source(0.05)  # slow on purpose, so the signal arrives while tasks remain


def _tasks(db):
    con = sqlite3.connect(db)
    try:
        return {(c, k): s for c, k, s in con.execute("SELECT check_name, task_key, seconds FROM tasks")}
    finally:
        con.close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_audit_resumably(tmp_path, signum, code):
    (tmp_path / "slow.py").write_text(SLOW)
    db = tmp_path / "runs [a].sqlite"  # brackets and a space: the printed command must quote them
    args = ["audit", "--model", "slow.py:slow", "--quick", "--check", "corruptions", "--db", str(db)]
    args += ["--report", str(tmp_path / "r.html")]
    cmd = [sys.executable, "-m", "mlsafety.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stored: dict = {}
    deadline = time.monotonic() + 300  # a safety net against a hang, not a timing assertion
    while not stored and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if db.exists():
            try:
                stored = _tasks(db)
            except sqlite3.OperationalError:  # the schema is being created
                continue
    if proc.poll() is not None:
        pytest.skip("the audit finished before the signal could be sent (a very fast machine)")
    assert stored, "no task was stored in time"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err

    lines = without_progress(err)
    assert len(lines) == 1, err
    name = signal.Signals(signum).name
    before = _tasks(db)
    resume = "python -m mlsafety.cli " + shlex.join([*args, "--resume"])
    said = re.fullmatch(
        rf"interrupted: stopped by {name}; (\d+) of (\d+) tasks of run (\S+) are stored; (.*)", lines[0]
    )
    assert said is not None, lines[0]
    run_id, status = _run(db)
    assert (int(said[1]), said[3], said[4]) == (len(before), run_id, f"continue with: {resume}")
    assert status == "interrupted"
    con = sqlite3.connect(db)
    orphans = con.execute(
        "SELECT COUNT(*) FROM results r WHERE NOT EXISTS "
        "(SELECT 1 FROM tasks t WHERE t.run_id=r.run_id AND t.check_name=r.check_name AND t.task_key=r.task_key)"
    ).fetchone()[0]
    con.close()
    assert orphans == 0  # the task in flight was rolled back whole
    assert not (tmp_path / "r.html").exists()

    printed = shlex.split(resume)
    assert printed[:3] == ["python", "-m", "mlsafety.cli"]
    done = subprocess.run(
        [sys.executable, *printed[1:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    after = _tasks(db)
    assert _run(db) == (run_id, "complete")
    assert len(after) == int(said[2]) and all(after[k] == s for k, s in before.items())  # stored tasks were not re-run
    assert (tmp_path / "r.html").exists()


def _run(db):
    con = sqlite3.connect(db)
    try:
        (row,) = con.execute("SELECT run_id, status FROM runs").fetchall()
        return row
    finally:
        con.close()
