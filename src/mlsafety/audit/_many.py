"""``audit-many``: several models or checkpoints audited in one invocation, one run each.

With a Ray executor the runs go in parallel: each run is planned and stored by its own driver thread
(only the driver writes the store; every run has its own SQLite connection) and all runs' tasks share
the executor's workers, so a slow model does not hold up the others. With the local executor the runs
go one after another. Every run is an ordinary audit: ``mlsafety runs``, ``--resume`` (per model) and
``mlsafety report RUN`` treat it like one started by ``mlsafety audit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from mlsafety.audit._engine import AuditResult, run_audit
from mlsafety.audit._executors import Executor, LocalExecutor
from mlsafety.audit._inputs import AuditConfig
from mlsafety.core import InputError


def run_many(
    config: AuditConfig,
    models: Sequence[str],
    db: str | Path | None = None,
    executor: Executor | None = None,
    report_dir: str | Path | None = None,
    on_done: Callable[[str, AuditResult | InputError], None] | None = None,
) -> list[AuditResult | InputError]:
    """Audit each of ``models`` with ``config`` (its ``model`` replaced), one run each.

    Args:
        config: the audit's settings shared by every model (data, checks, seed...).
        models: what ``--model`` takes, once per model (zoo names, ``FILE.py:factory``, folders...).
        db: the results database shared by the runs.
        executor: where tasks run; a Ray executor runs the models in parallel (None: one after another
            in this process).
        report_dir: write each run's report there as ``<run id>.html``; None: no reports.
        on_done: called as each model's run ends, with the model and its result or its one-line error.

    Returns:
        Per model, in ``models``' order, its :class:`AuditResult`, or the :class:`InputError` that refused
        it (a bad model is refused before its run is stored and does not stop the others).
    """
    if not models:
        raise InputError("audit-many needs at least one model")
    if len(set(models)) != len(models):
        dup = next(m for m in models if models.count(m) > 1)
        raise InputError(f"model {dup!r} is named twice; each model is audited once")
    runner = executor if executor is not None else LocalExecutor()
    runner.start()
    weights = config.weights
    if weights is not None and len(models) > 1:
        raise InputError("--weights names one model's weights; give each model as FILE.py:factory or a folder")

    def one(model: str) -> AuditResult | InputError:
        cfg = replace(config, model=model, check_params={k: dict(v) for k, v in config.check_params.items()})
        result: AuditResult | InputError
        try:
            if report_dir is None:
                result = run_audit(cfg, db=db, report="", executor=runner)
            else:
                result = _with_report(cfg, db, Path(report_dir), runner)
        except InputError as exc:
            result = exc
        if on_done is not None:
            on_done(model, result)
        return result

    if isinstance(runner, LocalExecutor) or len(models) == 1:
        return [one(m) for m in models]
    with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="audit-many") as pool:
        return list(pool.map(one, models))


def _with_report(cfg: AuditConfig, db: str | Path | None, folder: Path, runner: Executor) -> AuditResult:
    """A run whose report goes to ``folder/<run id>.html`` (written once the run id is known)."""
    from mlsafety.audit._report import write_report
    from mlsafety.audit._store import Store

    result = run_audit(cfg, db=db, report="", executor=runner)
    folder.mkdir(parents=True, exist_ok=True)
    with Store(db) as store:
        result.report_path = write_report(store, result.run_id, folder / f"{result.run_id}.html")
    return result


__all__ = ["run_many"]
