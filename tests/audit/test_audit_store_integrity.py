"""What the engine guarantees about the results store: a task's rows land whole or not at all, a run interrupted
anywhere resumes to the rows (and pictures) of an uninterrupted run, a crash between two writes is repaired on
``--resume``, two processes creating one database make one schema, and the report needs nothing but the store."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.audit._engine import PLAN_CHECK, AuditInterrupted
from mlsafety.audit._report import render_report, write_report
from mlsafety.audit._store import SCHEMA_VERSION

MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 40))
    np.savez(tmp_path / "ood.npz", x=0.3 * rng.random((20, 1, 8, 8)).astype(np.float32), y=-np.ones(20, dtype=int))
    return tmp_path


def _config(files, checks, **kw):
    return AuditConfig(model=f"{files}/m.py:small", data=str(files / "data.npz"), ood=[str(files / "ood.npz")],
                       checks=checks, quick=True, seed=3, **kw)  # fmt: skip


def _stored(db, run_id):
    """Every stored row (in the store's order, with its task) and every artifact of a run."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT check_name, hazard, metric, value, ci_low, ci_high, n, params_json, task_key, kind "
                           "FROM results WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()  # fmt: skip
        arts = con.execute("SELECT check_name, name, mime, caption, data, task_key FROM artifacts WHERE run_id=? "
                           "ORDER BY rowid", (run_id,)).fetchall()  # fmt: skip
        tasks = con.execute("SELECT check_name, task_key FROM tasks WHERE run_id=?", (run_id,)).fetchall()
    finally:
        con.close()
    return rows, arts, sorted(tasks)


# multi-task checks: the attacks and the curve drawn from their rows (needs), corruptions and their summary,
# a trojan scan and its hazards, and defence in depth, which reads every other check's hazards
CHECKS = ["clean", "adversarial", "corruptions", "ood-basic", "trojans", "defence-in-depth"]
SMALL = {
    "adversarial": {"n": 30, "n_boot": 50},
    "corruptions": {"corruptions": ["gaussian-noise", "fog"], "severities": [1, 3], "n_boot": 50},
    "trojans": {"nc_steps": 20, "max_clean": 30},
    "defence-in-depth": {"adaptive_steps": 3},
}


def test_a_run_interrupted_at_several_tasks_resumes_to_the_uninterrupted_rows(files):
    """Same seed: a run stopped after its 2nd, 4th, 7th, 11th and 17th tasks (between attacks, before the curve
    drawn from their rows, before the corruptions' summary, between the trojan scan and STRIP, inside defence in
    depth) and resumed each time stores exactly the rows, intervals, parameters, order and pictures of a run that
    was never stopped."""
    whole = run_audit(_config(files, CHECKS, check_params=SMALL), db=files / "whole.sqlite", report="")
    db = files / "stopped.sqlite"
    stops, count = [2, 4, 7, 11, 17], {"n": 0}

    def stop(check, key, seconds):
        count["n"] += 1
        if count["n"] in stops:
            raise KeyboardInterrupt

    run_id = None
    for attempt in range(len(stops)):
        with pytest.raises(AuditInterrupted) as info:
            run_audit(_config(files, CHECKS, check_params=SMALL), db=db, report="", resume=attempt > 0, on_task=stop)
        run_id = run_id or info.value.run_id
        assert info.value.run_id == run_id
    resumed = run_audit(_config(files, CHECKS, check_params=SMALL), db=db, report="", resume=True, on_task=stop)
    assert resumed.run_id == run_id and resumed.resumed_tasks == 17
    assert resumed.ran_tasks + resumed.resumed_tasks == whole.ran_tasks
    a, b = _stored(files / "whole.sqlite", whole.run_id), _stored(db, run_id)
    assert a[2] == b[2]  # the same tasks
    assert a[0] == b[0]  # every row, bit for bit, in the same order
    assert a[1] == b[1]  # every picture, byte for byte
    assert resumed.rows == whole.rows


class _Exploding:
    """An artifact whose bytes cannot be read: the task's rows are already inserted when the write trips on it."""

    name, mime, caption = "boom", "image/png", ""

    @property
    def data(self):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt


def test_a_task_interrupted_while_it_is_written_leaves_none_of_its_rows(files, counting_check, monkeypatch):
    """An interruption inside the task's transaction (after its rows went in, before its artifacts and its done
    mark) rolls the whole task back: the store keeps the tasks before it, nothing of it, and resumes it."""
    from mlsafety.audit import _store

    real = _store.Store.write_task

    def write(self, run_id, check, key, rows, artifacts, seconds):  # type: ignore[no-untyped-def]
        if (check, key) == ("test-counting", "t1"):
            artifacts = [*artifacts, _Exploding()]
        return real(self, run_id, check, key, rows, artifacts, seconds)

    db = files / "runs.sqlite"
    cfg = _config(files, ["test-counting"])
    with monkeypatch.context() as m:
        m.setattr(_store.Store, "write_task", write)
        with pytest.raises(AuditInterrupted) as info:
            run_audit(cfg, db=db, report="")
    rows, arts, tasks = _stored(db, info.value.run_id)
    assert [r[2] for r in rows if r[0] == "test-counting"] == ["value_0"]
    assert ("test-counting", "t1") not in tasks and ("test-counting", "t0") in tasks and not arts
    with Store(db) as store:
        assert store.run(info.value.run_id).status == "interrupted"
    resumed = run_audit(cfg, db=db, report="", resume=True)
    fresh = run_audit(cfg, db=files / "fresh.sqlite", report="")
    assert resumed.run_id == info.value.run_id and resumed.ran_tasks == 2
    assert [(r.key, r.value) for r in resumed.rows] == [(r.key, r.value) for r in fresh.rows]


def test_a_crash_between_the_run_and_its_plan_rows_is_repaired_on_resume(files, counting_check, monkeypatch):
    """The run is created, then its audit-plan task (the validation share held out of --data) is written in a
    second transaction: a crash between the two must not leave the resumed run without that row."""
    from mlsafety.audit import _store

    real = _store.Store.write_task

    def crash_on_plan(self, run_id, check, key, rows, artifacts, seconds):  # type: ignore[no-untyped-def]
        if check == PLAN_CHECK:
            raise KeyboardInterrupt
        return real(self, run_id, check, key, rows, artifacts, seconds)

    db = files / "runs.sqlite"
    cfg = _config(files, ["test-counting"])
    with monkeypatch.context() as m:
        m.setattr(_store.Store, "write_task", crash_on_plan)
        with pytest.raises(AuditInterrupted):
            run_audit(cfg, db=db, report="")
    resumed = run_audit(cfg, db=db, report="", resume=True)
    fresh = run_audit(cfg, db=files / "fresh.sqlite", report="")
    assert resumed.resumed_tasks == 0
    assert [(r.key, r.value, r.n) for r in resumed.rows] == [(r.key, r.value, r.n) for r in fresh.rows]
    assert "audit-plan/validation/held_out_of_test" in {r.key for r in resumed.rows}


def _open_at_once(path, barrier, errors):  # type: ignore[no-untyped-def]
    barrier.wait()
    try:
        Store(path).close()
    except Exception as exc:  # collected and shown by the test's assertion
        errors.append(exc)


def test_processes_creating_one_new_database_at_once_make_one_schema_in_wal_mode(tmp_path):
    """Four connections (as four processes would) open the same new file at once: none fails on the lock the
    switch to WAL needs, and the schema (one version row) is created once."""
    for trial in range(3):
        path, barrier, errors = tmp_path / f"new{trial}.sqlite", threading.Barrier(4), []
        threads = [threading.Thread(target=_open_at_once, args=(path, barrier, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        con = sqlite3.connect(path)
        try:
            assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
            assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            con.close()


def test_the_report_is_rebuilt_from_the_store_alone(files):
    """With the model file, the data and the OOD set gone, ``mlsafety report`` renders the audit's report from
    the database, equal to the one the audit wrote."""
    db, first = files / "runs.sqlite", files / "first.html"
    result = run_audit(_config(files, ["clean", "ood-basic"], fail_under={"clean/clean/accuracy": 0.99}),
                       db=db, report=first)  # fmt: skip
    for name in ("m.py", "data.npz", "ood.npz"):
        (files / name).unlink()
    with Store(db, readonly=True) as store:
        again = render_report(store, result.run_id)
        path = write_report(store, result.run_id, files / "again.html")
    assert again == first.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert "FAILED: clean/clean/accuracy" in again  # the gates too come from the stored run record


def test_no_two_tasks_of_a_run_write_one_row_key_or_picture_name(files, monkeypatch):
    """The store keys a row by (run, check, hazard, metric) and a picture by (run, check, name) and replaces on
    conflict: a check whose tasks wrote one key twice would lose a number silently. Over every check: each row
    and picture a task hands over is one the store keeps."""
    from mlsafety.audit import CHECKS, _store

    written: dict[tuple[str, ...], list[str]] = {}
    real = _store.Store.write_task

    def write(self, run_id, check, key, rows, artifacts, seconds):  # type: ignore[no-untyped-def]
        for r in rows:
            written.setdefault((check, r.hazard, r.metric), []).append(key)
        for a in artifacts:
            written.setdefault((check, "picture", a.name), []).append(key)
        return real(self, run_id, check, key, rows, artifacts, seconds)

    monkeypatch.setattr(_store.Store, "write_task", write)
    every = [c for c in CHECKS.available() if not c.startswith("test-")]
    result = run_audit(_config(files, every, check_params=SMALL), db=files / "runs.sqlite", report="")
    twice = {k: v for k, v in written.items() if len(v) > 1}
    assert not twice, twice
    rows, arts, _ = _stored(files / "runs.sqlite", result.run_id)
    assert len(rows) + len(arts) == len(written) and {r.check for r in result.rows} >= set(every)


def test_only_the_driver_can_write_the_store():
    """What runs a task (the checks, their views, the context and the executors' worker side) imports neither
    the store nor SQLite: a Ray worker has no way to write the database; the engine writes what it returns."""
    import ast
    from pathlib import Path

    import mlsafety.audit as audit

    root = Path(audit.__file__).parent
    sources = [*root.glob("checks/*.py"), *root.glob("views/*.py")]
    sources += [root / name for name in ("_check.py", "_context.py", "_executors.py", "_budget.py")]
    assert len(sources) > 20
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
            else:
                continue
            assert not [n for n in names if "sqlite" in n or n.endswith("_store") or n == "Store"], (path, names)


def test_a_resumed_run_records_and_reports_the_gates_of_the_command_that_finished_it(files, counting_check):
    """Gates change no stored number, so ``--resume`` may add or change them; the run's record (what the report
    and ``mlsafety report`` state) must then hold the gates the command judged it by, not the first attempt's."""
    db, report = files / "runs.sqlite", files / "report.html"
    counting_check.crash_at = 1
    with pytest.raises(RuntimeError):
        run_audit(_config(files, ["test-counting"], fail_over={"test-counting/clean/value_0": 2.0}), db=db, report="")
    counting_check.crash_at = -1
    gate = {"test-counting/clean/value_0": 0.5}  # value_0 is about 0.84 with this seed
    result = run_audit(_config(files, ["test-counting"], fail_over=gate), db=db, report=report, resume=True)
    assert result.resumed_tasks == 1 and [f.key for f in result.gate_failures] == ["test-counting/clean/value_0"]
    html = report.read_text(encoding="utf-8")
    assert "FAILED: test-counting/clean/value_0" in html and "&lt;= 2" not in html
    with Store(db) as store:
        assert store.run(result.run_id).config["gates"] == {"fail_under": {}, "fail_over": gate}
