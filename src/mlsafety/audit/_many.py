"""``audit-many``: several models or checkpoints audited in one invocation, one run each.

With a Ray executor the runs go in parallel: each run is planned and stored by its own driver thread
(only the driver writes the store; every run has its own SQLite connection) and all runs' tasks share
the executor's workers, so a slow model does not hold up the others. The driver prepares one run at a
time (loading the model, hashing, planning, up to the run's creation): a model factory that seeds
torch's global generator (``torch.manual_seed(0)`` then building layers) would otherwise get other
threads' draws, and the probe that times the model for a budget would time several at once. With the
local executor the runs go one after another. Every run is an ordinary audit: ``mlsafety runs``,
``--resume`` (per model) and ``mlsafety report RUN`` treat it like one started by ``mlsafety audit``.
"""

from __future__ import annotations

import threading
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
    parallel: int | None = None,
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
        parallel: runs in flight at once on a Ray executor (each a driver thread that plans and stores
            it); None: one more than the cluster has CPUs, at most the number of models (the extra run is
            prepared while the workers are busy, so a worker that ends a task of the last run in flight
            starts one of the next at once instead of waiting for the driver to load and plan it).

    Returns:
        Per model, in ``models``' order, its :class:`AuditResult`, or the :class:`InputError` that refused
        it (a bad model is refused before its run is stored and does not stop the others).
    """
    if not models:
        raise InputError("audit-many needs at least one model")
    if len(set(models)) != len(models):
        dup = next(m for m in models if models.count(m) > 1)
        raise InputError(f"model {dup!r} is named twice; each model is audited once")
    if config.weights is not None and len(models) > 1:
        raise InputError("--weights names one model's weights; give each model as FILE.py:factory or a folder")
    if parallel is not None and parallel < 1:
        raise InputError(f"parallel must be at least 1 (got {parallel})")
    runner = executor if executor is not None else LocalExecutor()
    runner.start()  # after the arguments are checked: starting Ray takes seconds

    preparing = threading.Lock()

    def one(model: str) -> AuditResult | InputError:
        cfg = replace(config, model=model, check_params={k: dict(v) for k, v in config.check_params.items()})
        result: AuditResult | InputError
        held = [preparing.acquire()]

        def prepared(plan: object, tasks: int) -> None:  # the run is stored: its tasks may overlap others'
            if held[0]:
                held[0] = False
                preparing.release()

        try:
            result = run_audit(cfg, db=db, report="", executor=runner, on_plan=prepared)
            if report_dir is not None:
                result.report_path = _report(db, result.run_id, Path(report_dir))
        except InputError as exc:
            result = exc
        finally:
            prepared(None, 0)
        if on_done is not None:
            on_done(model, result)
        return result

    width = min(len(models), parallel or getattr(runner, "slots", lambda: 1)())
    if isinstance(runner, LocalExecutor) or len(models) == 1:
        return [one(m) for m in models]
    threads = width
    if len(models) >= width and hasattr(runner, "per_run_view"):
        runner = runner.per_run_view()  # enough runs to fill the workers: units per check (RayExecutor._units)
        if parallel is None:  # one run more than workers: prepared while they are busy, queued on Ray until one frees
            threads = min(len(models), width + 1)
    elif width <= 1:
        return [one(m) for m in models]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="audit-many") as pool:
        return list(pool.map(one, models))


def _report(db: str | Path | None, run_id: str, folder: Path) -> Path:
    """Write run ``run_id``'s report to ``folder/<run id>.html``."""
    from mlsafety.audit._report import write_report
    from mlsafety.audit._store import Store

    folder.mkdir(parents=True, exist_ok=True)
    with Store(db) as store:
        return write_report(store, run_id, folder / f"{run_id}.html")


__all__ = ["run_many"]
