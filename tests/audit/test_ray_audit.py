"""The audit on Ray (issue 20): same seed, same rows as the local executor; audit-many; the CLI path.

One local Ray session (2 CPUs) serves the module and is shut down after it. The models are defined in a
user file (``FILE.py:factory``), which Ray workers cannot import by name: the executor sends them by value.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from mlsafety.audit import AuditConfig, RayExecutor, run_audit, run_many
from mlsafety.cli import main

ray = pytest.importorskip("ray")

MODELS = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.body(x))


def narrow():
    torch.manual_seed(0)
    return Tiny(8)


def wide():
    torch.manual_seed(1)
    return Tiny(16)
"""

# cheap checks whose tasks draw seeded randomness (attack starts, subsets, bootstraps) and share the
# forward pass: what must not depend on the worker or the order tasks finish in
CHECKS = ["clean", "calibration-basic", "ood-basic", "adversarial"]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((60, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 60))
    np.savez(tmp_path / "ood.npz", x=0.3 * rng.random((30, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 30))
    return tmp_path


def _config(files, model="narrow"):
    return AuditConfig(model=f"{files}/m.py:{model}", data=str(files / "data.npz"), ood=[str(files / "ood.npz")],
                       checks=CHECKS, quick=True, seed=7)  # fmt: skip


def _key(r):
    return (r.check, r.hazard, r.metric, r.kind, r.n, json.dumps(r.params, sort_keys=True, default=str))


def _same_rows(a, b):
    """Every row equal: identities exactly, numbers to 1e-6 relative (float kernels may differ across
    processes; on one machine they are in practice bit-equal)."""
    assert [_key(r) for r in a] == [_key(r) for r in b]
    for x, y in zip(a, b, strict=True):
        for u, v in ((x.value, y.value), (x.ci_low, y.ci_low), (x.ci_high, y.ci_high)):
            assert (u is None) == (v is None)
            if u is not None and not (math.isnan(u) and math.isnan(v)):
                assert u == pytest.approx(v, rel=1e-6, abs=1e-9), (_key(x), u, v)


def test_ray_gives_the_local_rows_for_every_model_of_audit_many(files, ray_session):
    local = [run_audit(_config(files, m), db=files / "local.sqlite", report="") for m in ("narrow", "wide")]
    executor = RayExecutor()  # the session of this module: used as it is, left running
    many = run_many(_config(files), [f"{files}/m.py:narrow", f"{files}/m.py:wide"], db=files / "ray.sqlite",
                    executor=executor)  # fmt: skip
    assert ray.is_initialized()
    assert len(local[0].rows) > 20 and any(r.check == "adversarial" for r in local[0].rows)
    for a, b in zip(local, many, strict=True):
        assert not isinstance(b, Exception), b
        assert b.ran_tasks == a.ran_tasks
        _same_rows(a.rows, b.rows)
    # the two models differ, so equality above is not two copies of one run
    assert [r.value for r in local[0].rows] != [r.value for r in local[1].rows]


def test_cli_audit_on_ray_matches_local_and_resume_sees_a_complete_run(files, ray_session):
    base = ["audit", "--model", f"{files}/m.py:narrow", "--data", str(files / "data.npz"), "--check", "clean",
            "--check", "adversarial", "--quick", "--seed", "7", "--json", "--report", ""]  # fmt: skip
    runner = CliRunner()
    loc = runner.invoke(main, [*base, "--db", str(files / "a.sqlite")])
    on_ray = runner.invoke(main, [*base, "--db", str(files / "b.sqlite"), "--executor", "ray"])
    assert loc.exit_code == 0 and on_ray.exit_code == 0, (loc.output, on_ray.output)
    rows = lambda out: json.loads(out)["results"]  # noqa: E731
    assert rows(loc.output) == rows(on_ray.output)  # budget size rows and all: in the same order
    again = runner.invoke(main, [*base, "--db", str(files / "b.sqlite"), "--executor", "ray", "--resume"])
    assert again.exit_code == 0, again.output  # nothing unfinished: a new run, same numbers
    assert rows(again.output) == rows(on_ray.output)
    assert ray.is_initialized()  # the CLI left the caller's session running


def test_a_failing_task_raises_its_own_error_not_rays_wrapper(ray_session):
    from mlsafety.audit._executors import _get
    from mlsafety.core import InputError

    def refuse():
        raise InputError("trojans: set n_seeds to 2 or more (got 1)")

    with pytest.raises(InputError) as info:
        _get(ray, ray.remote(refuse).remote())
    assert type(info.value) is InputError and str(info.value) == "trojans: set n_seeds to 2 or more (got 1)"


def test_an_interrupted_ray_run_resumes_to_the_local_rows(files, ray_session):
    from mlsafety.audit import AuditInterrupted

    config = _config(files)
    local = run_audit(config, db=files / "local.sqlite", report="")
    seen = []

    def stop_after_two(*args):
        seen.append(args)
        if len(seen) == 2:
            raise KeyboardInterrupt

    db = files / "ray.sqlite"
    with pytest.raises(AuditInterrupted) as info:
        run_audit(config, db=db, report="", executor=RayExecutor(), on_progress=stop_after_two)
    assert info.value.run_id is not None and 2 <= info.value.stored < info.value.total
    resumed = run_audit(config, db=db, report="", resume=True, executor=RayExecutor())
    assert resumed.run_id == info.value.run_id and resumed.resumed_tasks == 2
    _same_rows(local.rows, resumed.rows)


SLOW = """
import os
import time

import torch
from torch import nn

DRIVER = os.getpid()  # sent to the workers by value with the module


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if os.getpid() != DRIVER:  # slow on the Ray workers only: the driver's probes while preparing stay fast
            time.sleep(1.5)
        return self.head(self.body(x))


def a():
    torch.manual_seed(0)
    return Slow()


def b():
    torch.manual_seed(1)
    return Slow()


def c():
    torch.manual_seed(2)
    return Slow()
"""


def test_audit_many_prepares_the_next_run_while_the_workers_are_busy(files, ray_session):
    import sqlite3

    (files / "slow.py").write_text(SLOW)
    config = AuditConfig(data=str(files / "data.npz"), checks=["clean"], seed=7)
    db = files / "many.sqlite"
    res = run_many(config, [f"{files}/slow.py:{m}" for m in "abc"], db=db, executor=RayExecutor())
    assert all(not isinstance(r, Exception) for r in res), res
    con = sqlite3.connect(db)
    try:
        runs = list(con.execute("SELECT model, created, finished FROM runs ORDER BY created"))
    finally:
        con.close()
    assert [m.rsplit(":", 1)[1] for m, _, _ in runs] == ["a", "b", "c"]
    # 2 CPUs: the third run is stored (loaded, hashed, planned) before either of the first two has ended, and
    # waits on Ray for a free worker; one thread per CPU would only start preparing it once one of them ended
    assert runs[2][1] < min(runs[0][2], runs[1][2]), runs  # each run's forward pass sleeps 1.5 s on its worker


def _spy_units(monkeypatch):
    from mlsafety.audit._executors import RayExecutor as Executor

    sent = []
    real = Executor._units

    def spy(self, remote):
        units = real(self, remote)
        sent.append([[(c.name, t.key) for _, c, t in unit] for unit in units])
        return units

    monkeypatch.setattr(Executor, "_units", spy)
    return sent


def _stop_after(key):
    def on_progress(check, task, *rest):
        if task == key:
            raise KeyboardInterrupt

    return on_progress


def test_one_audit_groups_tasks_by_check_when_checks_outnumber_cpus(files, ray_session, monkeypatch):
    sent = _spy_units(monkeypatch)
    local = run_audit(_config(files), db=files / "local.sqlite", report="")
    on_ray = run_audit(_config(files), db=files / "ray.sqlite", report="", executor=RayExecutor())
    _same_rows(local.rows, on_ray.rows)
    # 4 checks on 2 CPUs: a streaming task per check, except the attacks, each its own Ray task (they share
    # nothing; the plots task gets their rows from their Ray results instead of attacking again)
    (units,) = sent
    whole = {u[0][0]: u for u in units if u[0][0] != "adversarial"}
    assert set(whole) == set(CHECKS) - {"adversarial"} and all(len({c for c, _ in u}) == 1 for u in units)
    attacks = [u for u in units if u[0][0] == "adversarial"]
    assert len(attacks) >= 2 and all(len(u) == 1 for u in attacks) and attacks[-1] == [("adversarial", "plots")]
    # as many CPUs as checks: every task its own Ray task, spread over the workers
    two = AuditConfig(model=f"{files}/m.py:narrow", data=str(files / "data.npz"), checks=["clean", "adversarial"],
                      quick=True, seed=7)  # fmt: skip
    run_audit(two, db=files / "ray2.sqlite", report="", executor=RayExecutor())
    assert all(len(u) == 1 for u in sent[1])
    # defence in depth judges the attacks: the adversarial check goes whole, to the worker that builds them
    did = AuditConfig(model=f"{files}/m.py:narrow", data=str(files / "data.npz"), ood=[str(files / "ood.npz")],
                      checks=["clean", "adversarial", "defence-in-depth"], quick=True, seed=7)  # fmt: skip
    run_audit(did, db=files / "ray3.sqlite", report="", executor=RayExecutor())
    (adversarial,) = [u for u in sent[2] if u[0][0] == "adversarial"]
    assert len(adversarial) >= 2 and adversarial[-1] == ("adversarial", "plots")
    assert len(sent[2]) == 3


def test_audit_many_spreads_checks_and_attacks_but_keeps_a_run_with_defence_in_depth_whole(
    files, ray_session, monkeypatch
):
    sent = _spy_units(monkeypatch)
    models = [f"{files}/m.py:narrow", f"{files}/m.py:wide"]
    res = run_many(_config(files), models, db=files / "many.sqlite", executor=RayExecutor())
    assert all(not isinstance(r, Exception) for r in res), res
    assert len(sent) == 2
    for units in sent:  # a unit per check, the attacks one by one
        assert len(units) > len(CHECKS) and all(len({c for c, _ in u}) == 1 for u in units)
        assert [("adversarial", "plots")] in units
    sent.clear()
    did = AuditConfig(data=str(files / "data.npz"), ood=[str(files / "ood.npz")], checks=["adversarial",
                      "defence-in-depth"], quick=True, seed=7)  # fmt: skip
    res = run_many(did, models, db=files / "did.sqlite", executor=RayExecutor())
    assert all(not isinstance(r, Exception) for r in res), res
    # defence in depth judges the attacks: the run stays on one worker, which builds each attack once
    assert [len(units) for units in sent] == [1, 1]


def test_a_run_stopped_before_its_plots_resumes_them_from_the_stored_attack_rows(files, ray_session):
    config = _config(files)
    local = run_audit(config, db=files / "local.sqlite", report="")
    last_attack = [r.hazard for r in local.rows if r.metric == "robust_accuracy"][-1]
    for name, executor in (("local", None), ("ray", RayExecutor())):
        from mlsafety.audit import AuditInterrupted, Store

        db = files / f"stopped-{name}.sqlite"
        with pytest.raises(AuditInterrupted):
            run_audit(config, db=db, report="", executor=executor, on_progress=_stop_after(last_attack))
        resumed = run_audit(config, db=db, report="", resume=True, executor=executor)
        assert resumed.resumed_tasks >= 2
        _same_rows(local.rows, resumed.rows)
        with Store(db) as store:
            names = [a.name for _, a in store.artifacts(resumed.run_id, "adversarial")]
        assert sorted(names) == ["adversarial-pairs", "robust-accuracy-curve"]


def test_ray_gives_the_local_rows_and_pictures_for_the_checks_that_share_and_read_hazards(files, ray_session):
    """The dearer multi-task checks on Ray (2 CPUs, 8 checks: a streaming unit per check): certified's radii
        and consistency attacks, corruptions and their summary, a trojan scan and its hazards, the transparency
        tasks, and defence in depth, which judges every other check's hazards on its worker. Rows in the local
        order and pictures name for name (their bytes are equal too on one machine, but plotted floats may move in
    the last digits across processes, as the rows' tolerance allows)."""
    from mlsafety.audit import Store

    small = {
        "adversarial": {"n": 30, "n_boot": 50},
        "corruptions": {"corruptions": ["gaussian-noise", "fog"], "severities": [1, 3], "n_boot": 50},
        "trojans": {"nc_steps": 20, "max_clean": 30},
        "defence-in-depth": {"adaptive_steps": 3},
    }
    checks = ["clean", "adversarial", "certified", "corruptions", "ood-basic", "trojans", "transparency",
              "defence-in-depth"]  # fmt: skip
    config = AuditConfig(model=f"{files}/m.py:narrow", data=str(files / "data.npz"), ood=[str(files / "ood.npz")],
                         checks=checks, quick=True, seed=7, check_params=small)  # fmt: skip
    local = run_audit(config, db=files / "local.sqlite", report="")
    on_ray = run_audit(config, db=files / "ray.sqlite", report="", executor=RayExecutor())
    assert {r.check for r in local.rows} >= set(checks)
    _same_rows(local.rows, on_ray.rows)
    pictures = []
    for db, run in ((files / "local.sqlite", local), (files / "ray.sqlite", on_ray)):
        with Store(db) as store:
            pictures.append([(c, a.name, a.caption) for c, a in store.artifacts(run.run_id)])
    assert len(pictures[0]) >= 8 and pictures[0] == pictures[1]


def test_a_running_clusters_address_passes_the_address_check(ray_session):
    """The GCS of a live Ray answers the check that refuses addresses of other services (test_ray_errors.py)."""
    address = ray.get_runtime_context().gcs_address
    executor = RayExecutor(address=address)
    assert executor.address == address
