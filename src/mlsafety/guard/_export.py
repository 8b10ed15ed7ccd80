"""Export a stored audit run's chosen monitor with its model, and load it back as a :class:`Guard`.

A guard directory holds::

    model.safetensors     the model's weights (state dict)
    monitor.safetensors   the detector's fitted tensors and the validation scores (drift reference)
    guard.json            the monitor's thresholds and parts, the detector's name and settings, the
                          head, the drift alarm's settings, the model spec to rebuild the architecture
    provenance.json       run id, model fingerprint, how the state was obtained, the validation
                          figures the monitor was chosen on, the escaped-failure rates (with intervals)
                          the audit measured for it
    manifest.json         SHA-256 of every file above

The audit stores the monitor's thresholds but not the detector's fitted state, so the export refits
the detector from the run's recorded configuration and data (same seed, same fit and validation data,
split as the check splits them; the weights, the validation and the training data are checked against the run's
digests: :func:`mlsafety.audit.checks.defence_in_depth.monitor_data`), sets the thresholds again on the validation
data exactly as the defence-in-depth check does, and refuses to export when they differ from the stored
ones. The drift alarm's reference is the monitor's score on that validation data (inputs the detector
was not fitted on, so the stream's scores are exchangeable with them while nothing drifts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mlsafety.audit import AuditConfig, Store, cap_data, input_changes, prepare_inputs, resolve_model
from mlsafety.audit.checks.defence_in_depth import monitor_data
from mlsafety.core import InputError, check_device, forward
from mlsafety.guard._drift import DriftAlarm, check_settings
from mlsafety.guard._guard import Guard, detector_state, restore_state
from mlsafety.monitoring import ood
from mlsafety.systemic import Monitor, failures

CHECK = "defence-in-depth"
FILES = ("model.safetensors", "monitor.safetensors", "guard.json", "provenance.json")
MANIFEST = "manifest.json"
VALIDATION_SCORES = "__validation_scores__"
RATE_METRICS = (
    "escaped_failure_rate",
    "adaptive_escaped_failure_rate",
    "failure_rate",
    "caught_share",
    "false_alarm_rate",
)
THRESHOLD_RTOL = 1e-5
"""Relative tolerance of the refitted thresholds against the stored ones (kernels differ across CPUs)."""


def model_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): the formula the audit's
    run record uses for its ``weights`` digest, so the two can be compared."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_guard` wrote: the directory, the run, the monitor and how its state was obtained."""

    out: Path
    run_id: str
    monitor: Monitor
    state: str
    fingerprint: str


def _config_of(record: dict[str, Any]) -> AuditConfig:
    """The run's :class:`AuditConfig` from its stored record."""
    names = {f.name for f in dataclasses.fields(AuditConfig)}
    kw = {k: v for k, v in record.items() if k in names}
    gates = record.get("gates") or {}
    kw["fail_under"], kw["fail_over"] = {}, {}  # gates do not change the monitor; their checks may be absent
    del gates
    if kw.get("image_size") is not None:
        kw["image_size"] = tuple(kw["image_size"])
    return AuditConfig(**kw)


def _rows(store: Store, run_id: str) -> list[Any]:
    rows = store.results(run_id, CHECK)
    if not any(r.metric == "validation_escape" for r in rows):
        raise InputError(
            f"run {run_id} has no defence-in-depth result to export a monitor from; run "
            "`mlsafety audit --check defence-in-depth` with the same model and data, then export that run"
        )
    return rows


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=THRESHOLD_RTOL, abs_tol=1e-9)


def export_guard(store: Store, run_id: str, out: str | Path, arl: float = 1000.0, kappa: float = 0.5) -> ExportResult:
    """Write a guard directory for run ``run_id`` (or ``latest``) of ``store`` to ``out``.

    Args:
        store: the results database.
        run_id: a run id, a unique prefix, ``latest`` or ``previous``.
        out: the directory to write (created; files in it are replaced).
        arl: the drift alarm's level (mean in-distribution inputs before a false alarm, at least), at most
            :data:`~mlsafety.guard.DriftAlarm.MAX_ARL`.
        kappa: the drift alarm's calibrator exponent.

    Raises:
        InputError: an ``arl`` or ``kappa`` the drift alarm refuses (before anything is read or written),
            the run has no defence-in-depth result, its weights, validation or training data
            changed since the audit,
            or the refitted thresholds differ from the stored ones.
    """
    check_settings(arl, kappa)  # else a guard directory is written that load_guard refuses
    info = store.run(run_id)
    rows = _rows(store, info.run_id)
    chosen = [r for r in rows if r.metric == "validation_escape" and r.params.get("selected")]
    clean = [r for r in rows if r.hazard == "clean" and r.metric == "escaped_failure_rate"]
    if not chosen or not clean:
        raise InputError(
            f"run {info.run_id}'s defence-in-depth result is incomplete (no chosen monitor); rerun the check"
        )
    stored = clean[0].params
    name = str(stored["monitor"])
    params = info.config.get("effective_params", {}).get(CHECK, {})
    fa, share = float(params.get("false_alarm_rate", 0.05)), float(params.get("confidence_share", 0.5))

    config = _config_of(info.config)
    model, data = prepare_inputs(config)
    if model.modality != "image":
        raise InputError(
            f"run {info.run_id} audited a {model.modality} model; the guard exports image classifiers only"
        )
    inputs = info.config.get("inputs", {})
    fp = model_fingerprint(model.module)
    if inputs.get("weights", {}).get("digest") not in (None, fp):
        raise InputError(
            f"the model {config.model} no longer has the weights run {info.run_id} audited; export needs them"
        )
    # the monitor is refitted on the run's fit and validation data: they must be the data it was audited on
    changed = input_changes(inputs, config, model, data, ("val", "train"))
    if changed:
        raise InputError(
            f"run {info.run_id}'s inputs changed since the audit ({'; '.join(changed)}); the monitor cannot be "
            "refitted as audited: restore them, or rerun the audit and export that run"
        )
    data = cap_data(data, config.max_samples, config.seed)  # the subsets the engine audited

    # refit exactly as the check does: detector on the fit data, thresholds on the validation data
    fit, val = monitor_data(data, info.seed)  # without training data: disjoint halves of the validation data
    det: ood.Detector | None = None
    val_out = forward(model, val.x, config.batch_size)
    val_scores = None
    detector = stored.get("detector")
    if detector is not None:
        det = ood.create(str(detector))
        fit_out = forward(model, fit.x, config.batch_size)
        ood.fit_detectors([det], model, fit, config.batch_size, outputs=fit_out, labels=fit.y)
        val_scores = ood.score_detectors([det], model, val.x, config.batch_size, outputs=val_out)[det.name].cpu()
    failed = failures(val_out.logits, val.y).cpu()
    conf = val_out.probs.amax(dim=1).cpu()
    mon = Monitor.fit(
        name, val_scores, ~failed, fa,
        val_confidence=conf if (name.endswith("confidence")) else None,
        confidence_share=share, detector=None if detector is None else str(detector),
    )  # fmt: skip
    for key in ("score_threshold", "confidence_threshold"):
        if not _close(getattr(mon, key), stored.get(key)):
            raise InputError(
                f"refitting monitor {name!r} of run {info.run_id} gives {key} {getattr(mon, key)!r}, the run stored "
                f"{stored.get(key)!r}; the inputs or the library changed since the audit: "
                "rerun the audit and export that run"
            )
    guard = Guard(model.module, mon, det, head=model.head_name)
    val_violation = guard.decide(val_out).score.cpu()

    state_tensors, extra = ({}, {}) if det is None else detector_state(det)  # refused before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}, str(out / FILES[0]))
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_tensors.items()}
    tensors[VALIDATION_SCORES] = val_violation.contiguous()
    save_file(tensors, str(out / FILES[1]))
    sample_shape = list(val.x.shape[1:])
    guard_json = {
        "monitor": dataclasses.asdict(mon),
        "detector": None if det is None else {"name": det.name, "params": det.get_params(), "state": extra},
        "head": model.head_name,
        "model": {"spec": config.model, "weights": config.weights},
        "input": {"shape": sample_shape, "range": [0.0, 1.0], "classes": model.num_classes},
        "drift": {"arl": arl, "kappa": kappa, "seed": info.seed},
    }
    validation = [
        {"monitor": r.hazard.split("/", 1)[1], "validation_escape": r.value, "ci": [r.ci_low, r.ci_high], "n": r.n,
         "selected": bool(r.params.get("selected"))}
        for r in rows if r.metric == "validation_escape"
    ]  # fmt: skip
    rates = [
        {"hazard": r.hazard, "metric": r.metric, "value": r.value, "ci": [r.ci_low, r.ci_high], "n": r.n}
        for r in rows
        if r.metric in RATE_METRICS and r.params.get("monitor", name) == name
    ]
    state = (
        "refit at export: the audit stores the monitor's thresholds, not the detector's fitted state; the detector "
        "was fitted again on the run's fit data (the run's config and seed) and the thresholds set again on its "
        "validation data; both equal the stored thresholds"
        f" (relative tolerance {THRESHOLD_RTOL:g})"
    )
    provenance = {
        "run_id": info.run_id,
        "run_created": info.created,
        "mlsafety_version": info.version,
        "model_fingerprint": fp,
        "run_fingerprint": info.fingerprint,
        "seed": info.seed,
        "data": info.data,
        "state": state,
        "false_alarm_rate_target": fa,
        "confidence_share": share,
        "validation": {"n": int(val.x.shape[0]), "candidates": validation},
        "escaped_failure_rates": rates,
    }
    (out / FILES[2]).write_text(json.dumps(guard_json, indent=2, sort_keys=True) + "\n")
    (out / FILES[3]).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    manifest = {"files": {f: _sha256(out / f) for f in FILES}, "algorithm": "sha256"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ExportResult(out, info.run_id, mon, state, fp)


def verify_guard_dir(path: str | Path) -> dict[str, Any]:
    """Check every file of a guard directory against its manifest; returns ``guard.json``.

    Raises:
        InputError: a missing directory, manifest or file, or a file whose SHA-256 differs.
    """
    d = Path(path)
    if not (d / MANIFEST).is_file():
        raise InputError(
            f"{d} is not a guard directory (no {MANIFEST}); make one with `mlsafety guard export RUN_ID --out {d}`"
        )
    try:
        listed = json.loads((d / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{d / MANIFEST} is damaged ({e}); export the guard again") from None
    for f in FILES:
        if f not in listed:
            raise InputError(f"{d / MANIFEST} does not list {f}; export the guard again")
        if not (d / f).is_file():
            raise InputError(f"guard file {d / f} is missing; export the guard again")
        if _sha256(d / f) != listed[f]:
            raise InputError(
                f"guard file {d / f} was altered (its SHA-256 differs from the manifest); export the guard again"
            )
    try:
        cfg = json.loads((d / FILES[2]).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{d / FILES[2]} is damaged ({e}); export the guard again") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{d / FILES[2]} is damaged (not a JSON object); export the guard again")
    return cfg


@dataclass
class LoadedGuard:
    """A loaded guard directory: the :class:`Guard`, a fresh :class:`DriftAlarm` and the provenance."""

    guard: Guard
    drift: DriftAlarm
    config: dict[str, Any]
    provenance: dict[str, Any]

    def new_drift(self) -> DriftAlarm:
        d = self.config["drift"]
        return DriftAlarm(self.drift.reference, d["arl"], d["kappa"], d["seed"])


def load_guard(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> LoadedGuard:
    """Load a guard directory written by :func:`export_guard`, checking the manifest and the model.

    Args:
        path: the guard directory.
        model: the model to guard (its weights must be the exported ones); None: the architecture is
            rebuilt from the recorded model spec and the exported weights are loaded into it.
        device: where the guard runs (the model is moved there).

    Raises:
        InputError: an unknown or missing device, a missing or altered file, or a model whose fingerprint is not
            the exported one.
    """
    device = check_device(device, "the guard")  # before anything is loaded: torch's RuntimeError is no one-line refusal
    d = Path(path)
    cfg = verify_guard_dir(d)
    try:
        return _load_checked(d, cfg, model, device)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        # files that match the manifest but not what export writes (edited and re-hashed, or another version's):
        # a JSON error, a key or field missing, weights or state that do not fit the rebuilt model or detector
        what = f"{type(e).__name__}: {e}".splitlines()[0]
        raise InputError(
            f"guard directory {d} is damaged or not one export_guard wrote ({what}); export the guard again"
        ) from None


def _load_checked(d: Path, cfg: dict[str, Any], model: nn.Module | None, device: torch.device) -> LoadedGuard:
    """:func:`load_guard`'s body, on a directory whose files match the manifest."""
    prov = json.loads((d / FILES[3]).read_text())
    want = prov["model_fingerprint"]
    if model is None:
        spec = cfg["model"]
        model = resolve_model(spec["spec"], spec["weights"], "cpu", cfg["head"]).module
        model.load_state_dict(load_file(str(d / FILES[0])))
    got = model_fingerprint(model)
    if got != want:
        raise InputError(
            f"the model given is not the one exported to {d} (weights fingerprint {got[:12]}, expected {want[:12]}); "
            "pass the audited model or export a guard for this one"
        )
    tensors = load_file(str(d / FILES[1]))
    reference = tensors.pop(VALIDATION_SCORES)
    fields = {f.name for f in dataclasses.fields(Monitor)}
    if set(cfg["monitor"]) != fields:  # a missing scale would silently take its default
        raise ValueError(f"the monitor's fields are {sorted(cfg['monitor'])}, expected {sorted(fields)}")
    mon = Monitor(**cfg["monitor"])
    det = None
    if cfg["detector"] is not None:
        det = ood.create(cfg["detector"]["name"], **cfg["detector"]["params"])
        restore_state(det, tensors, cfg["detector"]["state"])
    guard = Guard(model, mon, det, head=cfg["head"]).to(device)
    guard.eval()
    drift = DriftAlarm(reference, cfg["drift"]["arl"], cfg["drift"]["kappa"], cfg["drift"]["seed"])
    return LoadedGuard(guard, drift, cfg, prov)
