"""`mlsafety guard export`: a stored audit run's monitor shipped with the model, loaded back and checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from mlsafety.audit import AuditConfig, Store, prepare_inputs, run_audit
from mlsafety.audit._engine import cap_data
from mlsafety.cli import main
from mlsafety.core import InputError
from mlsafety.guard import DriftAlarm, Guard, load_guard, model_fingerprint, verify_guard_dir

CHECK = "defence-in-depth"


def _config() -> AuditConfig:
    return AuditConfig(
        model="digits-cnn", checks=[CHECK], max_samples=150, seed=3, check_params={CHECK: {"adaptive": False}}
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("guard")
    db = tmp / "runs.sqlite"
    run_audit(_config(), db=db, report="")
    out = tmp / "guard"
    r = CliRunner().invoke(main, ["guard", "export", "latest", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "refit at export" in r.output
    return db, out


def _stored(db: Path) -> dict[tuple[str, str], Any]:
    with Store(db, create=False) as store:
        run = store.run("latest")
        return {(r.hazard, r.metric): r for r in store.results(run.run_id, CHECK)}


@pytest.mark.slow
def test_guard_flags_equal_the_audits_monitor(exported: tuple[Path, Path]) -> None:
    """On the audit's own test and OOD inputs the guard's decisions give exactly the stored counts."""
    db, out = exported
    loaded = load_guard(out)
    config = _config()
    _, data = prepare_inputs(config)
    data = cap_data(data, config.max_samples, config.seed)
    stored = _stored(db)
    with torch.no_grad():
        clean = loaded.guard(data.test.x)
    failed = clean.pred.cpu() != data.test.y
    escaped = int((failed & clean.accept.cpu()).sum())
    row = stored[("clean", "escaped_failure_rate")]
    assert escaped == round(row.value * row.n)
    fa = stored[("clean", "false_alarm_rate")]
    assert int((~failed & ~clean.accept.cpu()).sum()) == round(fa.value * fa.n)
    for name, ds in data.ood.items():
        with torch.no_grad():
            accepted = int(loaded.guard(ds.x).accept.sum())
        r = stored[(f"ood/{name}", "escaped_failure_rate")]
        assert accepted == round(r.value * r.n), name


@pytest.mark.slow
def test_export_contents_and_provenance(exported: tuple[Path, Path]) -> None:
    db, out = exported
    cfg = verify_guard_dir(out)
    prov = json.loads((out / "provenance.json").read_text())
    with Store(db, create=False) as store:
        run = store.run("latest")
    assert prov["run_id"] == run.run_id
    assert prov["model_fingerprint"] == run.config["inputs"]["weights"]["digest"]  # the audit's weights digest
    assert prov["state"].startswith("refit at export")
    chosen = [c for c in prov["validation"]["candidates"] if c["selected"]]
    assert [c["monitor"] for c in chosen] == [cfg["monitor"]["name"]]
    rates = prov["escaped_failure_rates"]
    clean = [r for r in rates if (r["hazard"], r["metric"]) == ("clean", "escaped_failure_rate")]
    assert len(clean) == 1 and clean[0]["ci"][0] <= clean[0]["value"] <= clean[0]["ci"][1]
    stored = _stored(db)[("clean", "escaped_failure_rate")].params
    assert cfg["monitor"]["score_threshold"] == pytest.approx(stored["score_threshold"], rel=1e-5)


@pytest.mark.slow
def test_altered_missing_file_and_wrong_model_are_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = exported
    bad = tmp_path / "altered"
    shutil.copytree(out, bad)
    data = bytearray((bad / "monitor.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "monitor.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="altered") as e:
        load_guard(bad)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["serve", str(bad)])
    assert r.exit_code == 2 and "altered" in r.output and len(r.output.strip().splitlines()) == 1
    gone = tmp_path / "missing"
    shutil.copytree(out, gone)
    (gone / "guard.json").unlink()
    with pytest.raises(InputError, match="missing"):
        load_guard(gone)
    other = load_guard(out).guard.model
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(InputError, match="not the one exported"):
        load_guard(out, model=other)


def _rehash(d: Path) -> None:
    """Write the manifest again for the files as they are now (a hand edit that kept the manifest in step)."""
    import hashlib

    manifest = json.loads((d / "manifest.json").read_text())
    for f in manifest["files"]:
        manifest["files"][f] = hashlib.sha256((d / f).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))


def _drop_scale(d: Path) -> None:
    cfg = json.loads((d / "guard.json").read_text())
    del cfg["monitor"]["score_scale"]  # Monitor's default (1.0) would have changed every score silently
    (d / "guard.json").write_text(json.dumps(cfg))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: (d / "guard.json").write_text("not json"), id="guard.json"),
        pytest.param(lambda d: (d / "provenance.json").write_text("{}"), id="provenance.json"),
        pytest.param(lambda d: (d / "monitor.safetensors").write_bytes(b"xx"), id="monitor.safetensors"),
        pytest.param(_drop_scale, id="monitor-field"),
    ],
)
def test_a_damaged_file_the_manifest_agrees_with_is_one_line(
    exported: tuple[Path, Path], tmp_path: Path, damage: Any
) -> None:
    """The manifest catches a file changed by accident; a file changed with the manifest written again was a
    traceback (exit 1), or for a missing field a guard that scored with a default."""
    _, out = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    damage(bad)
    _rehash(bad)
    with pytest.raises(InputError, match="export the guard again") as e:
        load_guard(bad)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["serve", str(bad), "--port", "0"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.slow
def test_guard_in_a_plain_inference_loop(exported: tuple[Path, Path]) -> None:
    _, out = exported
    loaded = load_guard(out)
    model = loaded.guard.model
    guard = Guard(model, loaded.guard.monitor, loaded.guard.detector, head=loaded.guard.head).to("cpu")
    assert model_fingerprint(model) == loaded.provenance["model_fingerprint"]
    x = torch.rand(40, *loaded.config["input"]["shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = guard(x)
        parts = [guard(b) for b in torch.utils.data.DataLoader(x, batch_size=16)]
    assert torch.equal(torch.cat([p.accept for p in parts]), whole.accept)
    assert torch.allclose(torch.cat([p.logits for p in parts]), whole.logits, atol=1e-5)
    assert torch.allclose(whole.logits, model(x), atol=1e-5)  # the same logits as the bare model


def test_run_without_defence_in_depth_names_the_check(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    with Store(db) as store:
        run_id = store.create_run("digits-cnn", "digits", 0, "f" * 16, {}, "0")
        store.finish_run(run_id)
    r = CliRunner().invoke(main, ["guard", "export", run_id, "--out", str(tmp_path / "g"), "--db", str(db)])
    assert r.exit_code == 2
    assert "--check defence-in-depth" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_not_a_guard_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a guard directory"):
        load_guard(tmp_path)


@pytest.mark.slow
def test_drift_alarm_on_zoo_streams(exported: tuple[Path, Path]) -> None:
    """The audit's clean test stream raises no alarm; every zoo OOD stream alarms within a few inputs."""
    _, out = exported
    loaded = load_guard(out)
    config = _config()
    _, data = prepare_inputs(config)
    data = cap_data(data, config.max_samples, config.seed)
    with torch.no_grad():
        clean = loaded.new_drift()
        clean.update(loaded.guard(data.test.x).score)
        assert not clean.alarm
        for name, ds in data.ood.items():
            drift = loaded.new_drift()
            drift.update(loaded.guard(ds.x).score)
            assert drift.first_alarm is not None and drift.first_alarm <= 50, name


@pytest.mark.slow
def test_export_without_training_data_drift_reference_is_out_of_sample(tmp_path: Path) -> None:
    """An audit without training data fits the detector on half the validation data and sets the thresholds
    on the other half (the check's monitor_data); the export refits the same way (its thresholds equal the
    stored ones, its decisions the stored counts), and the drift reference is that other half: the detector's
    scores of its own fit inputs are in-sample, and against them the clean test stream raised the alarm."""
    config = AuditConfig(
        model="digits-cnn", val="digits", checks=[CHECK], max_samples=300, seed=1,
        check_params={CHECK: {"adaptive": False, "monitors": ["mahalanobis"]}},
    )  # fmt: skip
    db = tmp_path / "runs.sqlite"
    run_audit(config, db=db, report="")
    out = tmp_path / "guard"
    r = CliRunner().invoke(main, ["guard", "export", "latest", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    loaded = load_guard(out)
    assert loaded.guard.monitor.detector == "mahalanobis"
    _, data = prepare_inputs(config)
    data = cap_data(data, config.max_samples, config.seed)
    assert data.train is None and len(loaded.drift.reference) == len(data.val) // 2
    stored = _stored(db)
    with torch.no_grad():
        clean = loaded.guard(data.test.x)
    failed = clean.pred.cpu() != data.test.y
    fa = stored[("clean", "false_alarm_rate")]
    assert int((~failed & ~clean.accept.cpu()).sum()) == round(fa.value * fa.n) and fa.value < 0.12
    for seed in range(5):  # the clean stream in several orders: no alarm at level 1000
        drift = DriftAlarm(loaded.drift.reference, arl=1000.0, seed=seed)
        perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))
        drift.update(clean.score[perm])
        assert not drift.alarm, seed


@pytest.mark.slow
def test_export_refuses_validation_data_changed_since_the_audit(tmp_path: Path) -> None:
    """The monitor is refitted from the run's data: a validation file edited after the audit (one label
    flipped) is refused with the component named, before anything is written; the threshold comparison
    alone let such an edit through when the thresholds happened not to move."""
    np = pytest.importorskip("numpy")
    _, data = prepare_inputs(AuditConfig(model="digits-cnn", checks=[CHECK]))
    val = tmp_path / "val.npz"
    x, y = data.val.x.numpy(), data.val.y.numpy().copy()
    np.savez(val, x=x, y=y)
    config = AuditConfig(
        model="digits-cnn", val=str(val), checks=[CHECK], max_samples=150, seed=3,
        check_params={CHECK: {"adaptive": False, "monitors": ["mahalanobis"]}},
    )  # fmt: skip
    db = tmp_path / "runs.sqlite"
    run_audit(config, db=db, report="")
    y[-1] = (y[-1] + 1) % 10  # the refitted thresholds do not move (the old export wrote this guard)
    np.savez(val, x=x, y=y)
    out = tmp_path / "guard"
    r = CliRunner().invoke(main, ["guard", "export", "latest", "--out", str(out), "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert "the validation data changed" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
