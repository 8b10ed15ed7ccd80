"""The executor: resolve inputs, plan checks and tasks, run them, store rows as each task ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlsafety.audit import checks as _checks  # noqa: F401  (registers every check)
from mlsafety.audit._check import CHECKS, PILLARS, Check, StoredRow
from mlsafety.audit._context import AuditContext
from mlsafety.audit._gates import GateFailure, evaluate_gates, parse_gate_keys
from mlsafety.audit._inputs import AuditConfig, resolve_data, resolve_model, validate
from mlsafety.audit._store import Store
from mlsafety.core import InputError, Progress


def package_version() -> str:
    try:
        return version("mlsafety")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


@dataclass
class AuditResult:
    run_id: str
    rows: list[StoredRow]
    report_path: Path | None
    gate_failures: list[GateFailure] = field(default_factory=list)
    resumed_tasks: int = 0
    ran_tasks: int = 0
    seconds: float = 0.0


def build_checks(config: AuditConfig) -> list[Check]:
    """Instantiate the configured checks (validating names and parameters), in report order."""
    names = config.checks if config.checks is not None else CHECKS.available()
    unknown_params = sorted(set(config.check_params) - set(names))
    if unknown_params:
        CHECKS.get(unknown_params[0])  # raises for a misspelt name
        raise InputError(f"parameters given for check {unknown_params[0]!r}, which is not enabled")
    built = [CHECKS.create(n, quick=config.quick, **config.check_params.get(n, {})) for n in dict.fromkeys(names)]
    if not built:
        raise InputError("no checks selected; name at least one with --check")
    return sorted(built, key=lambda c: (PILLARS.index(c.pillar), c.name))


def run_audit(
    config: AuditConfig,
    db: str | Path | None = None,
    report: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_task: Callable[[str, str, float], None] | None = None,
) -> AuditResult:
    """Run an audit end to end; every input problem raises :class:`InputError` before anything is stored.

    Args:
        config: what to audit and how.
        db: results database (default ``$MLSAFETY_DB`` or ``./mlsafety-runs.sqlite``).
        report: where to write the HTML report (default ``reports/<run id>.html``; None-like
            ``""`` skips it).
        resume: continue the newest unfinished run with the same configuration, skipping stored tasks.
        progress: progress display (None: silent).
        on_task: called after each task with (check, task key, seconds).
    """
    start = time.perf_counter()
    parse_gate_keys({**config.fail_under, **config.fail_over})
    checks = build_checks(config)
    model = resolve_model(config.model, config.weights, config.device)
    data = resolve_data(config)
    validate(model, data)

    ctx = AuditContext(
        model,
        data,
        seed=config.seed,
        quick=config.quick,
        progress=progress,
        batch_size=config.batch_size,
        check_params={c.name: c.params for c in checks},
    )
    ctx.planned_hazards = list(dict.fromkeys(h for c in checks for h in c.hazards(ctx)))

    store = Store(db)
    try:
        fingerprint = config.fingerprint()
        previous = store.resumable(fingerprint) if resume else None
        if previous is not None:
            run_id = previous.run_id
            done = store.done_tasks(run_id)
        else:
            run_id = store.create_run(
                config.model, config.data, config.seed, fingerprint, _config_record(config), package_version()
            )
            done = set()
        ran = skipped = 0
        for check in checks:
            for task in check.tasks(ctx):
                if (check.name, task.key) in done:
                    skipped += 1
                    continue
                t0 = time.perf_counter()
                result = task.run()
                seconds = time.perf_counter() - t0
                store.write_task(run_id, check.name, task.key, result.rows, result.artifacts, seconds)
                ran += 1
                if on_task is not None:
                    on_task(check.name, task.key, seconds)
        store.finish_run(run_id)
        rows = store.results(run_id)
        report_path = None
        if report != "":
            from mlsafety.audit._report import write_report

            report_path = write_report(store, run_id, Path(report) if report else None)
    finally:
        store.close()
    failures = evaluate_gates(rows, config.fail_under, config.fail_over)
    return AuditResult(run_id, rows, report_path, failures, skipped, ran, time.perf_counter() - start)


def _config_record(config: AuditConfig) -> dict[str, object]:
    from dataclasses import asdict

    record = asdict(config)
    record["gates"] = {"fail_under": record.pop("fail_under"), "fail_over": record.pop("fail_over")}
    return record
