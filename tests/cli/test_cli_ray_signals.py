"""Three defects found running the documented commands: SIGTERM / SIGINT during `mlsafety audit --executor ray`
(Ray's handlers replaced the CLI's: no --resume line, the run stored as failed, exit 15), the progress ETA on
Ray ("about 1 s left" while each task took a minute), and `ood eval` cutting detector names at 80 columns."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.audit import _engine as engine
from mlsafety.audit import _executors as executors
from mlsafety.cli import main
from tests.cli.cli_support import slow_model_source, without_progress

# 1. signals around Ray's calls (the helpers, without Ray), then a real audit on a local Ray


class _Stop(KeyboardInterrupt):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, frame):
    raise _Stop(signum)


@pytest.fixture
def stop_handlers():
    """The CLI's kind of handlers (an exception naming the signal) for the test, the old ones put back."""
    old = {s: signal.signal(s, _raise_stop) for s in executors.STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_a_bare_keyboard_interrupt_from_ray_becomes_what_the_handler_raised(stop_handlers):
    """ray.wait ran the SIGTERM handler, then raised its own bare KeyboardInterrupt: SIGTERM read as SIGINT
    (exit 130, 'stopped by SIGINT'). What the handler raised is re-raised instead."""

    def like_ray_wait():
        try:
            signal.raise_signal(signal.SIGTERM)  # the handler runs inside the call
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # what ray._raylet.check_status raises

    with pytest.raises(_Stop) as caught, executors._handlers_own_errors():
        like_ray_wait()
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is _raise_stop  # the wrappers are gone after the call


def test_a_signal_while_ray_shuts_down_is_delivered_once_it_is_down(stop_handlers):
    steps = []
    with pytest.raises(_Stop) as caught:
        with executors._signals_held():
            signal.raise_signal(signal.SIGTERM)
            steps.append("shut down")  # not cut short by the signal
    assert steps == ["shut down"] and caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is _raise_stop


def test_handlers_that_ray_init_replaces_are_put_back(stop_handlers):
    with executors._caller_signal_handlers():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init installs
    assert signal.getsignal(signal.SIGTERM) is _raise_stop


SHUTDOWN = """
import os, signal, sys, threading
from mlsafety.audit._executors import RayExecutor


class Stop(KeyboardInterrupt):
    pass


def stop(signum, frame):
    raise Stop(signum)


signal.signal(signal.SIGTERM, stop)
ex = RayExecutor(num_cpus=1)
ex.start()
assert signal.getsignal(signal.SIGTERM) is stop, signal.getsignal(signal.SIGTERM)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # while Ray shuts down (about 1 s)
try:
    ex.close()
except Stop:
    print("stopped after the shutdown")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a POSIX signal")
def test_a_sigterm_while_ray_shuts_down_reaches_the_callers_handler(tmp_path):
    """ray.shutdown set SIGTERM to the default action (its C++ failure handler uninstalled): a SIGTERM then
    killed the audit with no message (exit 143, the run complete but unsaid) and left a Ray process running."""
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    (tmp_path / "shutdown.py").write_text(SHUTDOWN)
    done = subprocess.run([sys.executable, "shutdown.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=90)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "stopped after the shutdown", (done.returncode, done.stderr)
    assert "SIGTERM received" not in done.stderr


SLOW = slow_model_source(0.3)  # slow on purpose, so the signal arrives while tasks remain


def _descendants(pid):
    """Every process below ``pid`` (Ray's GCS, raylet and workers that the audit started)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pids):
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(p)
    return alive


def _stored(db):
    con = sqlite3.connect(db)
    try:
        (tasks,) = con.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return tasks, con.execute("SELECT status FROM runs").fetchall()
    finally:
        con.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find Ray's processes")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_ray_audit_as_it_stops_a_local_one(tmp_path, signum, code):
    """Ray's own handlers printed "*** SIGTERM received at ..." and stored the run as failed, with no --resume
    line. Now: the --resume line, exit 128 + N, the run interrupted with its finished tasks, Ray's processes
    gone. Bounded: 100 s in all."""
    pytest.importorskip("ray")
    (tmp_path / "slow.py").write_text(SLOW)
    db = tmp_path / "runs.sqlite"
    args = ["audit", "--model", "slow.py:slow", "--quick", "--check", "corruptions", "--executor", "ray"]
    args += ["--db", str(db), "--report", str(tmp_path / "r.html")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip  # Ray on 127.0.0.1 only
    proc = subprocess.Popen([sys.executable, "-m", "mlsafety.cli", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    ray_pids: list[int] = []
    try:
        deadline = time.monotonic() + 70
        stored = 0
        while not stored and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            ray_pids = sorted(set(ray_pids) | set(_descendants(proc.pid)))
            try:
                stored = _stored(db)[0] if db.exists() else 0
            except sqlite3.OperationalError:  # the schema is being created
                continue
        if proc.poll() is not None:
            pytest.skip("the audit finished before the signal could be sent (a very fast machine)")
        assert stored, "no task was stored in time"
        ray_pids = sorted(set(ray_pids) | set(_descendants(proc.pid)))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=25)
        assert proc.returncode == code, err
        assert "SIGTERM received" not in err, err  # Ray's C++ failure handler no longer answers it
        lines = without_progress(err)
        assert len(lines) == 1, err
        said = re.fullmatch(rf"interrupted: stopped by {signal.Signals(signum).name}; (\d+) of (\d+) tasks of run "
                            r"(\S+) are stored; continue with: (.*) --resume", lines[0])  # fmt: skip
        assert said is not None, lines[0]
        tasks, statuses = _stored(db)
        assert statuses == [("interrupted",)] and int(said[1]) == tasks < int(said[2])
        assert not (tmp_path / "r.html").exists()
        end = time.monotonic() + 15
        while _alive(ray_pids) and time.monotonic() < end:
            time.sleep(0.2)
        assert not _alive(ray_pids), "Ray's processes outlived the audit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _alive(ray_pids):  # only what this test's audit started
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


# 2. the ETA on Ray


def _tracker(budget, elapsed):
    from mlsafety.audit._budget import CheckCost, Knob, make_plan

    class FakeCheck:
        def __init__(self, name):
            self.name, self.params = name, {"n": 100}

    costs = [CheckCost("a", 0.0, [Knob("a", "n", 100, 10, 0.2)]), CheckCost("b", 0.0, [Knob("b", "n", 100, 10, 0.1)])]
    plan = make_plan(costs, budget=None)  # no size cut: a predicted 20 s, b 10 s
    return engine._Tracker(plan, budget, time.perf_counter() - elapsed, [FakeCheck("a"), FakeCheck("b")], set())


def test_the_eta_of_tasks_without_deadlines_is_not_capped_by_the_budget():
    """--quick presets a 2 min budget; Ray's tasks get no deadline from it, so a run goes on past it. The ETA was
    capped by what was left of the budget: 0 once past it ("about 1 s left" while each task took a minute)."""
    tracker = _tracker(budget=30.0, elapsed=40.0)  # past the budget; a predicted 20 s, b 10 s
    assert tracker.eta() == 0.0  # local: the deadlines stop the loops at the budget
    tracker.deadlines = False
    assert tracker.eta() == pytest.approx(30.0)
    tracker.done("a", 40.0)  # a took twice its prediction: b is expected to as well
    assert tracker.eta() == pytest.approx(20.0)


def test_the_eta_spreads_the_work_over_the_workers_but_not_below_the_dearest_check():
    tracker = _tracker(budget=None, elapsed=0.0)
    tracker.deadlines, tracker.workers = False, 2
    assert tracker.eta() == pytest.approx(20.0)  # max(30 / 2, 20): a's tasks run on one worker
    tracker.workers = 10
    assert tracker.eta() == pytest.approx(20.0)
    tracker.done("a", 20.0)
    assert tracker.eta() == pytest.approx(10.0)


def test_the_engine_tells_the_tracker_how_the_executor_runs_tasks(tmp_path, monkeypatch):
    """run_audit sets the ETA's workers from the executor's slots, and deadlines only for the local executor."""
    seen = []
    real = engine._Tracker.eta

    def eta(self):
        seen.append((self.workers, self.deadlines))
        return real(self)

    monkeypatch.setattr(engine._Tracker, "eta", eta)

    class TwoSlots(executors.LocalExecutor):
        name, replans = "ray", False  # what the engine reads of a Ray executor

        def slots(self):
            return 2

    config = engine.AuditConfig(model="digits-cnn", checks=["clean"], max_samples=60, seed=0, budget="1m")
    engine.run_audit(config, db=tmp_path / "r.sqlite", report="", executor=TwoSlots(), on_progress=lambda *a: None)
    engine.run_audit(config, db=tmp_path / "l.sqlite", report="", on_progress=lambda *a: None)
    assert seen and set(seen) == {(2, False), (1, True)}


# 3. ood eval at 80 columns


def test_ood_eval_keeps_detector_names_whole_at_80_columns():
    """Printed at the terminal's width, Rich cut the names: "mahalano..." at 80 columns."""
    names = ["mahalanobis-pre", "temperature-msp"]
    args = ["ood", "eval", "-d", names[0], "-d", names[1], "--ood", "noise", "--n-boot", "10"]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.split()[:1] == ["noise"]]
    assert sorted(row[1] for row in rows) == names, result.output
    assert "…" not in result.output and "..." not in result.output
