"""--resume continues a run only when every input that changes a number is unchanged (issue 12, point 3).

The scenario of the issue: an audit stops after some tasks, the data file is replaced by other data
under the same name, and ``--resume`` must refuse (exit 2, one line naming what changed, nothing
stored) instead of mixing numbers of two data sets in one run; with the data unchanged it resumes.
"""

import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.audit._fingerprint import components, differences, fingerprint, record
from mlsafety.audit._inputs import prepare_inputs
from mlsafety.cli import main
from mlsafety.core import InputError

MODEL = """
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def unseeded():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
"""


def _npz(path, seed, n=40):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.random((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, n))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    _npz(tmp_path / "data.npz", 0)
    _npz(tmp_path / "ood.npz", 5)
    _npz(tmp_path / "val.npz", 7)
    _npz(tmp_path / "extra.npz", 9)
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).state_dict(), tmp_path / "w.safetensors")
    return tmp_path


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return (
            con.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
            # the checks' tasks and rows (not the engine's audit-plan row saying validation was held out)
            con.execute("SELECT COUNT(*) FROM tasks WHERE check_name != 'audit-plan'").fetchone()[0],
            con.execute("SELECT COUNT(*) FROM results WHERE check_name != 'audit-plan'").fetchone()[0],
        )
    finally:
        con.close()


def test_resume_after_the_data_changed_is_refused_and_unchanged_data_resumes(files, counting_check):
    """The issue's scenario, on the command line: stop after one task, swap data.npz, --resume."""
    db = files / "runs.sqlite"
    args = ["audit", "--model", f"{files}/m.py:small", "--data", f"{files}/data.npz", "--ood", f"{files}/ood.npz"]
    args += ["--check", "test-counting", "--db", str(db), "--report", ""]
    counting_check.crash_at = 1
    crashed = CliRunner().invoke(main, args)
    assert isinstance(crashed.exception, RuntimeError)  # a genuine bug keeps its traceback
    assert _rows(db) == (1, 1, 1)
    original = (files / "data.npz").read_bytes()
    _npz(files / "data.npz", 1)  # other data under the same name
    counting_check.crash_at = -1
    refused = CliRunner().invoke(main, [*args, "--resume"])
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1, refused.output
    assert lines[0].startswith("error: cannot resume run ")
    assert f"the test data changed ({files}/data.npz has other content)" in lines[0]
    assert lines[0].endswith("run without --resume to start a new run")
    assert _rows(db) == (1, 1, 1)  # nothing stored, no second run
    (files / "data.npz").write_bytes(original)
    resumed = CliRunner().invoke(main, [*args, "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert _rows(db) == (1, 3, 3)
    assert counting_check.calls[-2:] == ["t1", "t2"]
    with Store(db) as store:
        assert [r.status for r in store.runs()] == ["complete"]


CHANGES = {
    "weights": (
        lambda d: {"weights": f"{d}/w.safetensors"},
        lambda d: _overwrite_weights(d),
        "the model weights changed ({d}/w.safetensors has other content)",
    ),
    "model code": (
        lambda d: {},
        lambda d: (d / "m.py").write_text(MODEL.replace("nn.Flatten(), ", "nn.Flatten(), nn.Identity(), ")),
        "the model code changed ({d}/m.py:small has other content)",
    ),
    "OOD set content": (lambda d: {}, lambda d: _npz(d / "ood.npz", 6), "the OOD set 'ood' changed"),
    "seed": (lambda d: {}, lambda d: {"seed": 3}, "--seed changed (0 -> 3)"),
    "unseeded factory": (
        lambda d: {"model": f"{d}/m.py:unseeded"},
        lambda d: None,
        "the model weights changed ({d}/m.py:unseeded built other weights; give --weights, or seed the factory",
    ),
    "batch size": (lambda d: {}, lambda d: {"batch_size": 7}, "--batch-size changed (256 -> 7)"),
    "checks": (
        lambda d: {},
        lambda d: {"checks": ["test-counting", "clean"]},
        "--checks changed",
    ),
    "check parameters": (
        lambda d: {"checks": ["test-counting", "calibration-basic"]},
        lambda d: {
            "checks": ["test-counting", "calibration-basic"],
            "check_params": {"calibration-basic": {"n_bins": 10}},
        },
        "--check-params changed",
    ),
    "validation data content": (
        lambda d: {"val": f"{d}/val.npz"},
        lambda d: _npz(d / "val.npz", 8),
        "the validation data changed ({d}/val.npz has other content)",
    ),
    "an OOD set added": (
        lambda d: {},
        lambda d: {"ood": [f"{d}/ood.npz", f"{d}/extra.npz"]},
        "the OOD set 'extra' was not part of the run",
    ),
    "an OOD set dropped": (lambda d: {}, lambda d: {"ood": []}, "the OOD set 'ood' is no longer given"),
    "max samples": (lambda d: {}, lambda d: {"max_samples": 20}, "--max-samples was not part of the run"),
    "quick profile": (lambda d: {}, lambda d: {"quick": True}, "--quick changed (false -> true)"),
}


def _overwrite_weights(d):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).state_dict(), d / "w.safetensors")


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_each_input_is_part_of_the_fingerprint(files, counting_check, case):
    base, change, needle = CHANGES[case]
    db = files / "runs.sqlite"
    kw = {"model": f"{files}/m.py:small", "data": f"{files}/data.npz", "ood": [f"{files}/ood.npz"]}
    kw.update(base(files))
    cfg = AuditConfig(**{"checks": ["test-counting"], **kw})
    counting_check.crash_at = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_audit(cfg, db=db, report="")
    counting_check.crash_at = -1
    settings = change(files)
    changed = AuditConfig(**{"checks": ["test-counting"], **kw, **(settings if isinstance(settings, dict) else {})})
    with pytest.raises(InputError, match="cannot resume run") as info:
        run_audit(changed, db=db, report="", resume=True)
    assert needle.format(d=files) in str(info.value)
    assert _rows(db)[:2] == (1, 1)


def test_the_newest_unfinished_run_with_equal_inputs_is_resumed(files, counting_check):
    """An unfinished run with other inputs does not block one with equal inputs, and is not touched."""
    db = files / "runs.sqlite"
    kw = {"model": f"{files}/m.py:small", "data": f"{files}/data.npz", "ood": [f"{files}/ood.npz"]}
    counting_check.crash_at = 1
    for seed in (0, 1):
        with pytest.raises(RuntimeError):
            run_audit(AuditConfig(checks=["test-counting"], seed=seed, **kw), db=db, report="")
    counting_check.crash_at = -1
    with Store(db) as store:
        first = store.runs()[-1]
    resumed = run_audit(AuditConfig(checks=["test-counting"], seed=0, **kw), db=db, report="", resume=True)
    assert resumed.run_id == first.run_id and resumed.resumed_tasks == 1
    with Store(db) as store:
        assert sorted(r.status for r in store.runs()) == ["complete", "failed"]


def test_no_unfinished_run_starts_a_new_one(files, counting_check):
    db = files / "runs.sqlite"
    cfg = AuditConfig(checks=["test-counting"], model=f"{files}/m.py:small", data=f"{files}/data.npz", ood=[])
    first = run_audit(cfg, db=db, report="", resume=True)
    again = run_audit(cfg, db=db, report="", resume=True)
    assert first.run_id != again.run_id and again.ran_tasks == 3


def test_components_hash_content_not_paths(files, tmp_path):
    """Two paths with the same bytes hash alike; the same path with other bytes does not."""
    (files / "copy.npz").write_bytes((files / "data.npz").read_bytes())
    kw = {"model": f"{files}/m.py:small", "ood": [], "checks": ["clean"]}
    a = AuditConfig(data=f"{files}/data.npz", **kw)
    b = AuditConfig(data=f"{files}/copy.npz", **kw)
    parts_a = components(a, *prepare_inputs(a))
    parts_b = components(b, *prepare_inputs(b))
    assert parts_a["data"].digest == parts_b["data"].digest
    assert differences(record(parts_a), parts_b) == []  # a moved or copied file is the same input
    _npz(files / "data.npz", 9)
    parts_c = components(a, *prepare_inputs(a))
    assert fingerprint(parts_c) != fingerprint(parts_a)
    assert differences(record(parts_a), parts_c)[0] == f"the test data changed ({files}/data.npz has other content)"
    assert differences({}, parts_a) == ["the run was stored by an older mlsafety that kept no input hashes"]


def test_the_run_record_keeps_each_component(files):
    db = files / "runs.sqlite"
    cfg = AuditConfig(checks=["clean"], model=f"{files}/m.py:small", data=f"{files}/data.npz", ood=[])
    result = run_audit(cfg, db=db, report="")
    with Store(db) as store:
        config = store.run(result.run_id).config
        inputs = config["inputs"]
    assert config["environment"] == {"torch_threads": torch.get_num_threads(), "executor": "local"}
    assert {"model", "weights", "data", "val", "train", "setting:seed", "version:mlsafety", "version:torch"} <= set(
        inputs
    )
    assert all(len(v["digest"]) > 0 for v in inputs.values())
