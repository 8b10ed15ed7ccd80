import sqlite3

import pytest

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.core import InputError


def test_same_seed_same_values_and_order_independence(tmp_path, counting_check):
    cfg = AuditConfig(checks=["clean", "test-counting"])
    a = run_audit(cfg, db=tmp_path / "a.sqlite", report="")
    b = run_audit(AuditConfig(checks=["test-counting", "clean"]), db=tmp_path / "b.sqlite", report="")
    assert {r.key: r.value for r in a.rows} == {r.key: r.value for r in b.rows}
    c = run_audit(AuditConfig(checks=["clean", "test-counting"], seed=1), db=tmp_path / "a.sqlite", report="")
    assert {r.key: r.value for r in c.rows} != {r.key: r.value for r in a.rows}


def test_resume_skips_stored_tasks(tmp_path, counting_check):
    db = tmp_path / "r.sqlite"
    cfg = AuditConfig(checks=["test-counting"])
    counting_check.crash_at = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_audit(cfg, db=db, report="")
    assert counting_check.calls == ["t0"]
    with Store(db) as store:
        (run,) = store.runs()
        assert run.status == "failed" and store.done_tasks(run.run_id) == {("test-counting", "t0")}
        first_value = store.results(run.run_id)[0].value
    counting_check.crash_at = -1
    counting_check.calls.clear()
    resumed = run_audit(cfg, db=db, report="", resume=True)
    assert resumed.run_id == run.run_id and resumed.resumed_tasks == 1 and resumed.ran_tasks == 2
    assert counting_check.calls == ["t1", "t2"]
    values = {r.metric: r.value for r in resumed.rows}
    assert set(values) == {"value_0", "value_1", "value_2"} and values["value_0"] == first_value
    with Store(db) as store:
        assert store.run(run.run_id).status == "complete"
    # a finished run is not resumed: a new run starts
    again = run_audit(cfg, db=db, report="", resume=True)
    assert again.run_id != run.run_id and again.ran_tasks == 3


def test_bad_inputs_write_nothing(tmp_path):
    db = tmp_path / "x.sqlite"
    for cfg in (AuditConfig(checks=["nope"]), AuditConfig(model="missing.py:f"), AuditConfig(data="nope.npz")):
        with pytest.raises(InputError):
            run_audit(cfg, db=db, report="")
    assert not db.exists()


def test_foreign_and_corrupt_databases(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="another program"):
        Store(foreign)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(InputError, match="not a usable"):
        Store(corrupt)
    assert corrupt.read_bytes().startswith(b"this is not")
    with pytest.raises(InputError, match="not found"):
        Store(tmp_path / "missing.sqlite", create=False)


def test_a_task_may_only_need_tasks_of_its_check_planned_before_it() -> None:
    from mlsafety.audit import CHECKS, Task, TaskResult
    from mlsafety.audit._engine import _check_needs

    a, b = CHECKS.create("clean"), CHECKS.create("calibration-basic")
    done = lambda: TaskResult()  # noqa: E731
    _check_needs([(a, Task("x", done)), (a, Task("y", done, needs=("x",)))])
    with pytest.raises(ValueError, match="needs 'y'"):
        _check_needs([(a, Task("x", done, needs=("y",))), (a, Task("y", done))])  # after it
    with pytest.raises(ValueError, match="needs 'x'"):
        _check_needs([(a, Task("x", done)), (b, Task("y", done, needs=("x",)))])  # another check's
