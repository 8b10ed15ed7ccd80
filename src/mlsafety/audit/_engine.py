"""The executor: resolve and check every input, plan checks and tasks, run them, store rows as each task ends.

Everything a user can get wrong (model, data, checks and their parameters, gates, the report path,
the database) is checked before the run's row is created, so a bad input leaves nothing stored.
An interruption (Ctrl-C, SIGTERM, a full disk) leaves the run resumable: every finished task is
stored in its own transaction, the task in flight is rolled back, and the run is marked
``interrupted`` (or ``failed``) so that ``--resume`` can continue it and the report says it is
unfinished.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlsafety.audit import _fingerprint
from mlsafety.audit import checks as _checks  # noqa: F401  (registers every check)
from mlsafety.audit._check import CHECKS, NOT_APPLICABLE, PILLARS, Check, StoredRow, Task, TaskResult, skip_row
from mlsafety.audit._context import AuditContext
from mlsafety.audit._gates import GateFailure, check_gates_apply, evaluate_gates
from mlsafety.audit._inputs import AuditConfig, prepare_audit_inputs
from mlsafety.audit._store import StorageError, Store, default_db_path
from mlsafety.core import Hazard, InputError, Progress, check_output_path

package_version = _fingerprint.package_version


@dataclass
class AuditResult:
    run_id: str
    rows: list[StoredRow]
    report_path: Path | None
    gate_failures: list[GateFailure] = field(default_factory=list)
    resumed_tasks: int = 0
    ran_tasks: int = 0
    seconds: float = 0.0


class AuditInterrupted(KeyboardInterrupt):
    """An audit stopped by a signal (SIGINT, SIGTERM) after its inputs were checked.

    A :class:`KeyboardInterrupt`, so code that stops on Ctrl-C still does. The stored tasks are
    consistent and the run (if one was created) is resumable with ``--resume``.

    Attributes:
        run_id: the run that was stopped, or None when it stopped before the run was created.
        stored: tasks of the run stored (including those resumed from an earlier attempt).
        total: tasks the run plans.
        signum: the signal's number (``signal.SIGINT`` for Ctrl-C / a plain KeyboardInterrupt).
        complete: True when every task was stored and only the report was not written.
    """

    def __init__(self, run_id: str | None, stored: int, total: int, signum: int, complete: bool = False) -> None:
        super().__init__(run_id, stored, total, signum)
        self.run_id, self.stored, self.total, self.signum, self.complete = run_id, stored, total, signum, complete


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


def check_report_path(report: str | Path | None) -> None:
    """Raise :class:`InputError` unless the report can be written at ``report`` (None: the default path).

    Nothing is created (:func:`mlsafety.core.check_output_path`).
    """
    from mlsafety.audit._report import default_report_path

    path = Path(report) if report else default_report_path("x")
    check_output_path(path, what="report", flag="--report", example="path/to/report.html")


def _tasks_stored(store: Store, run_id: str) -> int:
    try:
        return len(store.done_tasks(run_id))
    except InputError:
        return -1


def _close_run(store: Store, run_id: str, status: str) -> None:
    """Best effort after an interruption or error: roll back the task in flight, mark the run."""
    try:
        if store.conn.in_transaction:
            store.conn.execute("ROLLBACK")
        store.finish_run(run_id, status=status)
    except (InputError, sqlite3.Error):
        pass  # a full or vanished database: the run stays as it was, still resumable


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
        resume: continue the newest unfinished run with the same inputs, skipping stored tasks. An
            unfinished run whose inputs differ (other data content, weights, settings, versions)
            is refused with :class:`InputError` naming what changed.
        progress: progress display (None: silent).
        on_task: called after each task with (check, task key, seconds).

    Raises:
        InputError: a bad input, an unusable database or report path, a refused resume; or a
            storage failure during the run (the run is then marked ``failed`` and resumable).
        AuditInterrupted: a KeyboardInterrupt (SIGINT, or SIGTERM turned into one by the caller)
            arrived; the run is marked ``interrupted`` and resumable.
    """
    start = time.perf_counter()
    config = replace(config)  # prepare_inputs names the data when config.data is None; the caller's stays
    checks = build_checks(config)
    inputs = prepare_audit_inputs(config, checks)  # settings, gates, model, data, rewards: all checked here
    model, data = inputs.model, inputs.data

    ctx = AuditContext(
        model,
        data,
        seed=config.seed,
        quick=config.quick,
        progress=progress,
        batch_size=config.batch_size,
        check_params={c.name: c.params for c in checks},
        reward=inputs.reward,
        gold=inputs.gold,
    )
    check_gates_apply(config.fail_under, config.fail_over, checks, ctx.modality)  # a skipped check stores no metric
    runnable = [c for c in checks if c.not_applicable(ctx.modality) is None]
    ctx.planned_hazards = list(dict.fromkeys(Hazard.parse(h) for c in runnable for h in c.hazards(ctx)))
    plan: list[tuple[Check, Task]] = [
        (check, task) for check in checks for task in (check.tasks(ctx) if check in runnable else [_skip(check, ctx)])
    ]
    parts = _fingerprint.components(config, model, data, {"reward": inputs.reward, "gold": inputs.gold})
    fingerprint = _fingerprint.fingerprint(parts)
    if report != "":
        check_report_path(report)

    store = Store(db)
    run_id: str | None = None
    done: set[tuple[str, str]] = set()
    try:
        store.check_writable()
        if resume:
            run_id, done = _resumable(store, fingerprint, parts)
        if run_id is None:
            record = _config_record(config)
            record["inputs"] = _fingerprint.record(parts)
            run_id = store.create_run(
                config.model, str(config.data), config.seed, fingerprint, record, package_version()
            )
        ran = skipped = 0
        for check, task in plan:
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
    except KeyboardInterrupt as exc:
        old = _ignore_signals()
        try:
            if run_id is not None:
                _close_run(store, run_id, "interrupted")
            stored = _tasks_stored(store, run_id) if run_id is not None else 0
        finally:
            store.close()
            _restore_signals(old)
        signum = getattr(exc, "signum", signal.SIGINT)
        raise AuditInterrupted(run_id, stored, len(plan), signum) from None
    except StorageError as exc:
        if run_id is None:
            store.close()
            raise
        _close_run(store, run_id, "failed")
        stored = _tasks_stored(store, run_id)
        store.close()
        kept = f"{stored} of {len(plan)} tasks" if stored >= 0 else "the finished tasks"
        raise StorageError(f"{exc}; run {run_id} keeps {kept}: continue it with --resume once fixed") from None
    except BaseException:
        if run_id is not None:
            _close_run(store, run_id, "failed")
        store.close()
        raise

    try:
        report_path = None
        if report != "":
            from mlsafety.audit._report import write_report

            report_path = write_report(store, run_id, Path(report) if report else None)
    except InputError as exc:  # e.g. the disk filled up since the path was checked
        raise InputError(
            f"{exc}; run {run_id} is complete and stored: write its report with `mlsafety report {run_id} --out PATH`"
        ) from None
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        raise AuditInterrupted(run_id, len(plan), len(plan), signum, complete=True) from None
    finally:
        store.close()
    failures = evaluate_gates(rows, config.fail_under, config.fail_over)
    return AuditResult(run_id, rows, report_path, failures, skipped, ran, time.perf_counter() - start)


def _skip(check: Check, ctx: AuditContext) -> Task:
    """The one task of a check that does not apply to the audited inputs: it stores why."""
    row = skip_row(type(check), ctx.modality)
    return Task(NOT_APPLICABLE.replace("_", "-"), lambda: TaskResult([row]))


def _resumable(
    store: Store, fingerprint: str, parts: dict[str, _fingerprint.Component]
) -> tuple[str | None, set[tuple[str, str]]]:
    """The run ``--resume`` continues and its stored tasks; (None, {}) when no run is unfinished.

    The newest unfinished run with exactly these inputs is continued. Otherwise, when the newest
    unfinished run has other inputs, resuming is refused with one line naming what changed.
    """
    same = store.resumable(fingerprint)
    if same is not None:
        return same.run_id, store.done_tasks(same.run_id)
    unfinished = store.unfinished()
    if not unfinished:
        return None, set()
    latest = unfinished[0]
    changes = _fingerprint.differences(latest.config.get("inputs"), parts)
    if not changes:  # equal inputs under another fingerprint formula: continue it
        return latest.run_id, store.done_tasks(latest.run_id)
    raise InputError(
        f"cannot resume run {latest.run_id}: {'; '.join(changes)}; run without --resume to start a new run"
    )


def _ignore_signals() -> dict[int, object]:
    """Ignore SIGINT and SIGTERM while the interrupted run is closed (main thread only)."""
    old: dict[int, object] = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        pass
    return old


def _restore_signals(old: dict[int, object]) -> None:
    for s, handler in old.items():
        signal.signal(s, handler)  # type: ignore[arg-type]


def _config_record(config: AuditConfig) -> dict[str, object]:
    from dataclasses import asdict

    record = asdict(config)
    record["gates"] = {"fail_under": record.pop("fail_under"), "fail_over": record.pop("fail_over")}
    return record


__all__ = ["AuditInterrupted", "AuditResult", "build_checks", "check_report_path", "default_db_path", "run_audit"]
