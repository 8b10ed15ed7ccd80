"""Five command-line defects a review left open: advice naming options `ood eval` lacks, `serve --port 0` not
saying which port it took, an empty `--ray-address` taken as none, `guard export --arl 1e20`, and the library's
`run_audit(report=<the database>)` writing the HTML report over the results database."""

import math
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mlsafety.audit import AuditConfig, Store, run_audit
from mlsafety.cli import main
from mlsafety.cli._ood import ood_eval
from mlsafety.core import InputError
from mlsafety.guard import DriftAlarm, export_guard
from tests.cli.cli_support import one_error_line

CHECK = "defence-in-depth"


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A database with one small defence-in-depth run of digits-cnn, and its guard directory."""
    d = tmp_path_factory.mktemp("leftovers")
    db = d / "runs.sqlite"
    config = AuditConfig(model="digits-cnn", checks=[CHECK], max_samples=150, seed=3,
                         check_params={CHECK: {"adaptive": False}})  # fmt: skip
    run_audit(config, db=db, report="")
    with Store(db, create=False) as store:
        export_guard(store, "latest", d / "guard")
    return db, d / "guard"


# 1. ood eval: the audit's input messages advised --val, --channels and --classes, which it does not have


OOD_EVAL_FLAGS = {opt for p in ood_eval.params for opt in p.opts}


def _ood_eval_error(data, *more):
    result = CliRunner().invoke(main, ["ood", "eval", "--data", str(data), "-d", "msp", "--ood", "noise", *more])
    error = one_error_line(result)
    foreign = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", error)) - OOD_EVAL_FLAGS
    assert not foreign, error  # every flag the line names is one `ood eval` has
    return error


def test_ood_eval_too_little_data_advises_no_val(tmp_path):
    """`ood eval --data five.npz` said 'give at least 10, or pass --val'; ood eval has no --val."""
    np.savez(tmp_path / "five.npz", x=np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32), y=np.arange(5))
    assert "has 5 inputs; give at least 10" in _ood_eval_error(tmp_path / "five.npz")


@pytest.mark.parametrize(
    "command",
    [["tta", "--method", "tent"], ["audit", "--check", "clean"]],
    ids=["tta", "audit"],
)
def test_every_command_gets_advice_in_its_own_options(tmp_path, command):
    """The advice comes from the audit's shared input checks; each command's line names only options it has
    (friendly() rewrites the rest), and `audit`, which has --val, keeps it."""
    np.savez(tmp_path / "five.npz", x=np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32), y=np.arange(5))
    cmd = main.commands[command[0]]
    args = [*command, "--data", str(tmp_path / "five.npz")]
    if command[0] == "audit":
        args += ["--db", str(tmp_path / "db.sqlite"), "--report", ""]
    error = one_error_line(CliRunner().invoke(main, args))
    assert "has 5 inputs; give at least 10" in error
    options = {o for p in cmd.params for o in p.opts}
    foreign = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", error)) - options
    assert not foreign, error
    assert ("--val" in error) == (command[0] == "audit")


def test_ood_eval_wrong_shape_advises_no_channels(tmp_path):
    """A shape the model cannot take: '(see --image-size, --channels)'; ood eval has no --channels."""
    x = np.random.default_rng(0).random((20, 1, 5, 5), dtype=np.float32)
    np.savez(tmp_path / "small.npz", x=x, y=np.arange(20) % 10)
    assert "(see --image-size)" in _ood_eval_error(tmp_path / "small.npz")


def test_ood_eval_wrong_class_list_advises_no_classes(tmp_path):
    """A classes.txt of 3 names for a 10-logit model: 'give --classes with one name per output'."""
    folder = tmp_path / "images"
    for i, name in enumerate("abc"):
        (folder / name).mkdir(parents=True)
        for j in range(4):
            Image.fromarray(np.full((8, 8), 20 * (i + j), dtype=np.uint8)).save(folder / name / f"{j}.png")
    (folder / "classes.txt").write_text("a\nb\nc\n")
    error = _ood_eval_error(folder, "--image-size", "8", "8")
    assert "names 3 classes but the model returns 10 logits" in error and "class list (classes.txt)" in error


# 2. serve --port 0 never said which port the OS picked


def test_serve_on_port_0_prints_the_port_it_listens_on(audited):
    _, guard_dir = audited
    cmd = [sys.executable, "-m", "mlsafety.cli", "serve", str(guard_dir), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:  # until the address, or the end of the output
        for text in proc.stdout:
            lines.append(text)
            if "http://" in text:
                return

    try:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(120)  # loading torch and the guard: seconds; a server that never says where it is: the limit
        found = re.search(r"http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert found, f"serve printed no address (exit code {proc.poll()}): {''.join(lines)!r}"
        port = int(found.group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
            assert response.status == 200 and b'"status":"ok"' in response.read()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()


def test_serve_hands_uvicorn_the_socket_it_checked():
    """check_bind keeps the socket it bound (a port 0 bound and closed was another port than uvicorn's)."""
    serve_mod = pytest.importorskip("mlsafety.cli._serve")
    with serve_mod.check_bind("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port != 0 and serve_mod.url_of(sock) == f"http://127.0.0.1:{port}"
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # still held


# 3. --ray-address "" ran as if no address were given


@pytest.mark.parametrize(
    "command",
    [["audit", "--executor", "ray"], ["audit"], ["audit-many", "digits-cnn", "--executor", "ray"], ["audit-many", "x"]],
    ids=["audit-ray", "audit-local", "audit-many-ray", "audit-many-local"],
)
@pytest.mark.parametrize("address", ["", "  "], ids=["empty", "blank"])
def test_an_empty_ray_address_is_refused(tmp_path, command, address):
    result = CliRunner().invoke(main, [*command, "--ray-address", address, "--db", str(tmp_path / "r.sqlite")])
    one_error_line(result, "'--ray-address'", "empty", "HOST:PORT")
    assert not (tmp_path / "r.sqlite").exists()


def test_a_ray_address_without_the_ray_executor_is_refused(tmp_path):
    """Not taken silently either: the local executor would ignore it."""
    result = CliRunner().invoke(main, ["audit", "--ray-address", "10.0.0.5:6379", "--db", str(tmp_path / "r.sqlite")])
    one_error_line(result, "--ray-address", "--executor ray")
    assert not (tmp_path / "r.sqlite").exists()


# 4. guard export --arl 1e20 was taken (and the library wrote a guard with arl nan that load_guard refuses)


@pytest.mark.parametrize("arl", ["1e20", "1.000001e6", "inf", "nan"])
def test_guard_export_refuses_an_arl_above_the_maximum(tmp_path, audited, arl):
    db, _ = audited
    out = tmp_path / "guard"
    result = CliRunner().invoke(main, ["guard", "export", "latest", "--out", str(out), "--arl", arl, "--db", str(db)])
    one_error_line(result, "'--arl'")
    assert not out.exists()


@pytest.mark.parametrize("arl", [1e20, math.inf, math.nan, 1.0])
def test_the_library_refuses_the_same_arl_before_writing(tmp_path, audited, arl):
    db, _ = audited
    with Store(db, create=False) as store, pytest.raises(InputError, match="arl"):
        export_guard(store, "latest", tmp_path / "guard", arl=arl)
    assert not (tmp_path / "guard").exists()
    with pytest.raises(InputError, match="arl"):
        DriftAlarm(torch.randn(10), arl=arl)


def test_the_maximum_arl_is_taken(tmp_path, audited):
    db, _ = audited
    out = tmp_path / "guard"
    args = ["guard", "export", "latest", "--out", str(out), "--arl", f"{DriftAlarm.MAX_ARL:g}", "--db", str(db)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert DriftAlarm(torch.randn(10), arl=DriftAlarm.MAX_ARL).arl == DriftAlarm.MAX_ARL


# 5. run_audit(report=<the database>) wrote the HTML over the results database


def _refused_over_db(path, report, **kwargs):
    """run_audit(report=report, **kwargs) refused, the database at ``path`` untouched."""
    Store(path).close()  # an empty results database
    before = path.read_bytes()
    config = AuditConfig(model="digits-cnn", checks=["clean"], max_samples=50)
    with pytest.raises(InputError, match="is the results database"):
        run_audit(config, report=report, **kwargs)
    assert path.read_bytes() == before  # no run stored, no report written
    with Store(path, create=False) as store:
        assert store.runs() == []


def test_run_audit_refuses_the_database_as_report(tmp_path):
    _refused_over_db(tmp_path / "r.sqlite", tmp_path / "r.sqlite", db=tmp_path / "r.sqlite")


def test_run_audit_refuses_the_database_as_report_by_another_name(tmp_path):
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "r.sqlite", tmp_path / "link.sqlite")
    _refused_over_db(tmp_path / "r.sqlite", str(tmp_path / "sub" / ".." / "link.sqlite"), db=tmp_path / "r.sqlite")


def test_run_audit_refuses_the_default_database_as_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAFETY_DB", str(tmp_path / "env.sqlite"))
    _refused_over_db(tmp_path / "env.sqlite", tmp_path / "env.sqlite")


def test_the_cli_still_refuses_the_database_as_report(tmp_path):
    db = tmp_path / "r.sqlite"
    result = CliRunner().invoke(main, ["audit", "--check", "clean", "--db", str(db), "--report", str(db)])
    one_error_line(result, f"--report {db} is the results database", "--report path/to/report.html")
    assert not db.exists()
