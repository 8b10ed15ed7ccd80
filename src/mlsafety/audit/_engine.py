"""The executor: resolve and check every input, plan checks and tasks, run them, store rows as each task ends.

Everything a user can get wrong (model, data, checks and their parameters, gates, the report path,
the database) is checked before the run's row is created, so a bad input leaves nothing stored.
An interruption (Ctrl-C, SIGTERM, a full disk) leaves the run resumable: every finished task is
stored in its own transaction, the task in flight is rolled back, and the run is marked
``interrupted`` (or ``failed``) so that ``--resume`` can continue it and the report says it is
unfinished.
"""

from __future__ import annotations

import math
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mlsafety.audit import _fingerprint
from mlsafety.audit import checks as _checks  # noqa: F401  (registers every check)
from mlsafety.audit._budget import TEST, Plan, Rates, Sizes, check_costs, make_plan, measure_rates, parse_duration
from mlsafety.audit._check import (
    CHECKS,
    COUNT,
    DECISION,
    NOT_APPLICABLE,
    PILLARS,
    Check,
    Row,
    StoredRow,
    Task,
    TaskResult,
    skip_row,
)
from mlsafety.audit._context import AuditContext, AuditData
from mlsafety.audit._executors import Executor, LocalExecutor
from mlsafety.audit._gates import GateFailure, check_gates_apply, evaluate_gates
from mlsafety.audit._inputs import AuditConfig, prepare_audit_inputs
from mlsafety.audit._store import StorageError, Store, default_db_path, refuse_db_as_output
from mlsafety.core import ArrayDataset, Classifier, Hazard, InputError, Progress, check_output_path, generator

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
    plan: Plan | None = None
    """The cost plan (predicted seconds; with --budget, the sample sizes chosen), None when not costed."""
    held_out: tuple[int, int] | None = None
    """(validation inputs, test inputs before the split) when validation data was held out of --data."""
    notes: list[dict[str, Any]] = field(default_factory=list)
    """What the audit decided about the model and data (``audit/_inputs.py:input_notes``): lines for the summary."""


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


def check_report_path(report: str | Path | None, db: str | Path | None = None) -> None:
    """Raise :class:`InputError` unless the report can be written at ``report`` (None: the default path)
    without replacing the results database ``db`` (None: :func:`default_db_path`), which the HTML would
    overwrite with every run stored in it.

    Nothing is created (:func:`mlsafety.core.check_output_path`).
    """
    from mlsafety.audit._report import default_report_path

    path = Path(report) if report else default_report_path("x")
    refuse_db_as_output(path, db, "--report", "path/to/report.html")
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
    on_plan: Callable[[Plan | None, int], None] | None = None,
    on_progress: Callable[[str, str, int, int, float, float | None], None] | None = None,
    executor: Executor | None = None,
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
        on_plan: called once before the first task with the cost plan (the estimate; None for text and
            language models, which are not costed) and the number of tasks.
        on_progress: called after each task with (check, task key, tasks done including resumed ones,
            tasks in all, the task's seconds, the predicted seconds left or None).
        executor: where the tasks run (``audit/_executors.py``; None: one after another in this process).
            Only this process writes the store, whichever executor runs the tasks.

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
    # the run is fingerprinted on the data as given (a budget's cut is recorded and reused on --resume)
    parts = _fingerprint.components(config, model, data, {"reward": inputs.reward, "gold": inputs.gold})
    fingerprint = _fingerprint.fingerprint(parts)
    held_out = _held_out(data)
    data = cap_data(data, config.max_samples, config.seed)
    budget = parse_duration(config.budget) if config.budget is not None else None
    stored_plan = _stored_plan(db, fingerprint) if resume else None
    plan: Plan | None = None
    if isinstance(model, Classifier) and data.modality == "image":
        spent = time.perf_counter() - start + _startup(budget, start)  # the command's start-up counts too
        plan = _plan(checks, model, data, config, budget, spent, stored_plan)
        if budget is not None:
            data = _apply_plan(plan, checks, data, config.seed)
    # a text or language-model audit is not costed: a budget (--quick presets one) leaves its sizes as they are

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
    work: list[tuple[Check, Task]] = [
        (check, task) for check in checks for task in (check.tasks(ctx) if check in runnable else [_skip(check, ctx)])
    ]
    _check_needs(work)
    if report != "":
        check_report_path(report, db)
    # the engine's own audit-plan tasks (what it decided; sizes per check under a budget) count as stored tasks
    sized = {c.name for c, _ in work if budget is not None and plan is not None and _size_rows(plan, c.name)}
    total = len(work) + (1 if _plan_rows(plan, held_out) else 0) + len(sized)
    runner = executor if executor is not None else LocalExecutor()
    runner.start()  # after every input is checked, before anything is stored (a Ray address that does not answer)
    store = Store(db)
    run_id: str | None = None
    done: set[tuple[str, str]] = set()
    try:
        store.check_writable()
        if resume:
            run_id, done = _resumable(store, fingerprint, parts)
            if run_id is not None:  # the gates are this command's (not in the fingerprint): the report states them
                store.update_config(run_id, {"gates": _config_record(config)["gates"]})
        if run_id is None:
            record = _config_record(config)
            record["inputs"] = _fingerprint.record(parts)
            record["effective_params"] = {c.name: c.params for c in checks}
            record["notes"] = inputs.notes  # head chosen, class mapping, conversions, val/test gap (_inputs.py)
            # not part of the fingerprint (a resumed run may use other threads), but a float sum of more than
            # 32,768 terms splits by the thread count: kept so two runs' last digits can be explained
            record["environment"] = {"torch_threads": torch.get_num_threads(), "executor": getattr(runner, "name", "")}
            if plan is not None:
                record["plan"] = plan_record(plan)
            run_id = store.create_run(
                config.model, str(config.data), config.seed, fingerprint, record, package_version()
            )
        extra = _plan_rows(plan, held_out)
        if extra and (PLAN_CHECK, "plan") not in done:  # a resumed run whose first attempt stopped before it
            store.write_task(run_id, PLAN_CHECK, "plan", extra, [], 0.0)
        if on_plan is not None:  # after a refused --resume, which stays one line
            on_plan(plan, len(work))
        ran = 0
        # a resumed run keeps its first attempt's sizes; every other size may be re-planned (trojans too: its
        # trigger search is a task now, not part of planning)
        fixed = set(stored_plan or {})
        tracker = (
            _Tracker(plan, budget, start - _startup(budget, start), checks, fixed, ctx) if plan is not None else None
        )
        pending = [(i, c, t) for i, (c, t) in enumerate(work) if (c.name, t.key) not in done]
        deadlines = getattr(runner, "name", "") == "local"  # on Ray every task is sent at once, with no deadline
        if tracker is not None:  # the ETA: Ray's tasks run side by side, and past the budget (nothing stops them)
            tracker.deadlines = deadlines
            tracker.workers = int(getattr(runner, "slots", lambda: 1)())
        if tracker is not None and budget is not None and deadlines:
            # every task gets a deadline from the budget's share of its check; its long loops stop there and
            # store rows for the n they reached, so every check is present and no task is cut whole
            counts: dict[str, int] = {}
            for c, _t in work:
                counts[c.name] = counts.get(c.name, 0) + 1
            tracker.tasks_per_check = counts
            for _i, c, _t in pending:
                tracker.tasks_left[c.name] = tracker.tasks_left.get(c.name, 0) + 1
            pending = [(i, c, _budgeted(c, t, tracker, ctx)) for i, c, t in pending]
        skipped = len(work) - len(pending)
        # rows a pending task needs from a task stored by an earlier attempt come from the store; the others
        # are kept as their tasks are stored (on Ray the executor hands them to the worker itself)
        needed = {(c.name, k) for _i, c, t in pending for k in t.needs}
        ctx.earlier = {ck: store.task_rows(run_id, *ck) for ck in sorted(needed & done)}

        def before(check: Check) -> None:  # before a check's first task starts
            if tracker is not None:
                if runner.replans:  # sizes of the checks not yet started, from what the done ones cost
                    tracker.replan(check.name)
                sizes = _size_rows(tracker.plan, check.name) if budget is not None else []
                if sizes and (PLAN_CHECK, f"sizes/{check.name}") not in done:
                    store.write_task(run_id, PLAN_CHECK, f"sizes/{check.name}", sizes, [], 0.0)

        for i, check, task, result, seconds in runner.run(ctx, pending, before):
            store.write_task(run_id, check.name, task.key, result.rows, result.artifacts, seconds)
            if (check.name, task.key) in needed:
                ctx.earlier[(check.name, task.key)] = list(result.rows)
            ran += 1
            if tracker is not None:
                tracker.done(check.name, seconds)
            if on_task is not None:
                on_task(check.name, task.key, seconds)
            if on_progress is not None:
                on_progress(check.name, task.key, i + 1, len(work), seconds, tracker.eta() if tracker else None)
        if tracker is not None and budget is not None:  # re-planned sizes: the record states what the checks ran with
            first = store.run(run_id).config.get("plan") or {}  # its estimate stays the one shown before the run
            knobs = plan_record(tracker.plan)["knobs"]
            store.update_config(run_id, {"effective_params": {c.name: c.params for c in checks},
                                         "plan": {**first, "knobs": knobs}})  # fmt: skip
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
        raise AuditInterrupted(run_id, stored, total, signum) from None
    except StorageError as exc:
        if run_id is None:
            store.close()
            raise
        _close_run(store, run_id, "failed")
        stored = _tasks_stored(store, run_id)
        store.close()
        kept = f"{stored} of {total} tasks" if stored >= 0 else "the finished tasks"
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
        raise AuditInterrupted(run_id, total, total, signum, complete=True) from None
    finally:
        store.close()
    failures = evaluate_gates(rows, config.fail_under, config.fail_over)
    return AuditResult(
        run_id, rows, report_path, failures, skipped, ran, time.perf_counter() - start, plan, held_out, inputs.notes
    )


PLAN_CHECK = "audit-plan"
"""The check name under which the engine stores what it decided about the data and sample sizes: the
validation share held out of ``--data``, and with ``--budget`` every chosen n and its interval width."""


def cap_data(data: AuditData, max_samples: int | None, seed: int) -> AuditData:
    """At most ``max_samples`` inputs of every data source: a seeded subset (same seed, same inputs),
    in the source's order."""
    if max_samples is None:
        return data

    def cap(ds: ArrayDataset, role: str) -> ArrayDataset:
        if len(ds) <= max_samples:
            return ds
        keep = torch.randperm(len(ds), generator=generator(seed, "max-samples", role, ds.name))[:max_samples]
        return ds.subset(keep.sort().values)

    return AuditData(
        test=cap(data.test, "test"),
        val=cap(data.val, "val"),
        train=None if data.train is None else cap(data.train, "train"),
        ood={k: cap(v, "ood") for k, v in data.ood.items()},
    )


def _held_out(data: AuditData) -> tuple[int, int] | None:
    """(validation inputs, test inputs before the split) when the validation data was held out of --data."""
    if "held out for validation" in str(getattr(data.val, "source", "")):
        return len(data.val), len(data.val) + len(data.test)
    return None


def _stored_plan(db: str | Path | None, fingerprint: str) -> dict[tuple[str, str], int] | None:
    """The sample sizes the unfinished run ``--resume`` would continue has stored (rows of
    :data:`PLAN_CHECK` that name a check and a parameter), so a resumed run measures the checks it had
    started (and the shared test set) with the sizes of its first attempt; None when there is none."""
    try:
        with Store(db, create=False, readonly=True) as store:
            run = store.resumable(fingerprint)
            rows = store.results(run.run_id, PLAN_CHECK) if run is not None else []
    except (InputError, sqlite3.Error):
        return None
    return {
        (str(r.params["check"]), str(r.params["param"])): int(r.value)
        for r in rows
        if r.metric.endswith("_chosen") and "check" in r.params
    } or None


def _derived(check: Check, ctx: AuditContext, checks: list[Check]) -> dict[str, Any]:
    """A check's parameters plus what its cost model needs that the parameters only imply (``#grid``...)."""
    from mlsafety.audit.checks import corruptions
    from mlsafety.monitoring import ood

    p: dict[str, Any] = dict(check.params)
    adv = next((c for c in checks if c.name == "adversarial"), None)
    try:
        if adv is not None:
            p["#grid"] = len(adv._plan(ctx)[1])  # type: ignore[attr-defined]
            p["#n"] = int(adv.params["n"])
        if check.name == "corruptions":
            p["#corruptions"] = corruptions._names(check.params["corruptions"])
        if check.name == "tta":  # the methods it attacks ("all": every registered one; the model's BN decides
            p["#methods"] = len(check._plan()[0])  # type: ignore[attr-defined]  # applicability, not the count)
        if check.name == "ood":
            spec = check.params.get("detectors", "all")
            names = ood.DETECTORS.tagged(ood.QUICK) if spec == "quick" else ood.available() if spec == "all" else spec
            p["#grad_detectors"] = sum(1 for n in names if {"grad", "input-grad"} & set(ood.DETECTORS.get(n).needs))
    except Exception:
        pass
    if check.name == "adversarial":
        p.setdefault("#grid", 5)
    return p


def _attack_factories(check: Check | None, ctx: AuditContext) -> dict[str, Callable[[], Any]]:
    """Factories of the configured attacks at a mid-grid eps, for timing them on the probe."""
    if check is None:
        return {}
    from mlsafety.audit.checks import adversarial
    from mlsafety.robustness import attacks as atk

    try:
        names, grid = check._plan(ctx)  # type: ignore[attr-defined]
    except Exception:
        return {}
    eps = grid[len(grid) // 2] if grid else 0.03
    p = check.params

    def factory(name: str) -> Callable[[], Any]:
        return lambda: atk.create(name, eps=eps, norm=p["norm"], **adversarial._attack_params(p, name))

    return {n: factory(n) for n in names}


def _plan(
    checks: list[Check],
    model: Classifier,
    data: AuditData,
    config: AuditConfig,
    budget: float | None,
    spent: float,
    stored: dict[tuple[str, str], int] | None,
) -> Plan:
    """Measure the model on a probe batch and cost every check; with a budget, choose sample sizes."""
    t0 = time.perf_counter()
    probe_ctx = AuditContext(model, data, seed=config.seed, quick=config.quick, batch_size=config.batch_size,
                             check_params={c.name: c.params for c in checks})  # fmt: skip
    by_name = {c.name: c for c in checks}
    corr_names = []
    if "corruptions" in by_name:
        corr_names = list(_derived(by_name["corruptions"], probe_ctx, checks).get("#corruptions", []))
    rates: Rates = measure_rates(
        model, data.test.x, data.test.y, corr_names, _attack_factories(by_name.get("adversarial"), probe_ctx)
    )
    sizes = Sizes(
        len(data.test), len(data.val), 0 if data.train is None else len(data.train),
        sum(len(d) for d in data.ood.values()), model.num_classes,
    )  # fmt: skip
    params = {c.name: _derived(c, probe_ctx, checks) for c in checks}
    costs = check_costs(params, sizes, rates)
    probe = time.perf_counter() - t0
    plan = make_plan(costs, budget, spent + probe)
    plan.probe_seconds = probe
    for key, chosen in (stored or {}).items():  # --resume: the first attempt's sizes
        if key in plan.knobs:
            plan.knobs[key].chosen = chosen
    plan.sync()
    return plan


def _apply_plan(plan: Plan, checks: list[Check], data: AuditData, seed: int) -> AuditData:
    """Set the chosen sample sizes: check parameters, and the shared test set (a seeded subset)."""
    for c in checks:
        for (check, param), k in plan.knobs.items():
            if check == c.name and param in c.params:
                c.params[param] = k.chosen
    n = plan.chosen(TEST, TEST)
    if n is None or n >= len(data.test):
        return data
    keep = torch.randperm(len(data.test), generator=generator(seed, "budget", "test"))[:n].sort().values
    return replace(data, test=data.test.subset(keep))


def plan_record(plan: Plan) -> dict[str, Any]:
    """The plan as stored in the run's configuration record."""
    return {
        "budget_s": plan.budget,
        "predicted_s": plan.seconds,
        "probe_s": plan.probe_seconds,
        "fits": plan.fits,
        "checks": {c.check: c.seconds() for c in plan.costs},
        "knobs": [
            {"check": k.check, "param": k.param, "configured": k.value, "chosen": k.chosen, "unit_s": k.unit}
            | ({} if k.planned in (None, k.chosen) else {"planned": k.planned})  # the first plan's, where it differs
            for k in plan.knobs.values()
        ],
    }


def _size_rows(plan: Plan, check: str) -> list[Row]:
    """The sample sizes a budget chose for ``check`` (``#test``: the shared test set), each with the
    worst-case interval width it bought: rows of :data:`PLAN_CHECK`."""
    rows = []
    for k in plan.knobs.values():
        if k.check != check:
            continue
        name = "test_inputs" if k.check == TEST else f"{k.check}_{k.param}".replace("-", "_")
        info = {"check": k.check, "param": k.param, "configured": k.value}
        rows.append(Row.exact("clean", f"{name}_chosen", float(k.chosen), DECISION, **info))
        note = "95% interval width of a proportion at p = 1/2 with this n"
        rows.append(Row.exact("clean", f"{name}_worst_interval_width", round(k.width, 4), DECISION, k.chosen,
                              **info, note=note))  # fmt: skip
    return rows


def _plan_rows(plan: Plan | None, held_out: tuple[int, int] | None) -> list[Row]:
    """What the engine decided before the first task, as rows of :data:`PLAN_CHECK`: the validation share
    held out of --data, and the budget with the test-set size it chose (none for a plain run, whose rows
    stay as they were)."""
    rows: list[Row] = []
    if held_out is not None:
        n_val, n_all = held_out
        note = "no --val: this share of --data became validation"
        rows.append(Row.exact("validation", "held_out_of_test", float(n_val), COUNT, n_all,
                              share=round(n_val / n_all, 4), note=note))  # fmt: skip
    if plan is not None and plan.budget is not None:
        rows.append(Row.exact("clean", "budget_seconds", plan.budget, "setting"))
        rows.append(Row.exact("clean", "predicted_seconds", round(plan.seconds, 1), DECISION, fits=plan.fits))
        rows += _size_rows(plan, TEST)
    return rows


class _Tracker:
    """Predicted against measured seconds while the audit runs: the ETA, and re-planning of the checks
    not yet started so that errors of the cost models are absorbed by the later checks."""

    def __init__(
        self,
        plan: Plan,
        budget: float | None,
        start: float,
        checks: list[Check],
        fixed: set[tuple[str, str]],
        ctx: AuditContext | None = None,
    ) -> None:
        self.plan, self.budget, self.start, self.fixed = plan, budget, start, fixed
        self.ctx = ctx
        """The run's context: its ``shared_seconds`` tell the shared forward passes from the checks' own work
        (None: not measured apart; the first check's task is taken to pay them)."""
        self._shared_before = self._shared_paid()  # paid while the audit was planned: inside no task's seconds
        self.checks = {c.name: c for c in checks}
        self.predicted = {c.check: c.seconds() for c in plan.costs}
        self.spent: dict[str, float] = {}
        self.begun = time.perf_counter()
        self.tasks_per_check: dict[str, int] = {}
        self.tasks_left: dict[str, int] = {}
        """Tasks of each check not yet run (in the run's order: the checks still to come are those with some)."""
        self.check_end: dict[str, float] = {}
        """``perf_counter()`` by which each started check should end: its share of the budget left when it began."""
        self.deadlines = True
        """Whether the tasks get deadlines from the budget (the local executor), so none runs past it."""
        self.workers = 1
        """Tasks that run side by side (a Ray cluster's CPUs; 1: one after another in this process)."""

    def allot(self, check: str) -> float:
        """Seconds the next task of ``check`` may take. While the work after it fits what is left of the budget
        as predicted (scaled by the measured speed): everything but that work's predicted seconds. Otherwise,
        when a check starts it gets a share of what is left of the budget, in proportion to the square root of
        its predicted seconds (a dear check gets more, but no check is starved: every one keeps at least
        :data:`MIN_SHARE_S` of weight); its tasks then share what is left of that, equally over the tasks still
        to run, so a cheap task hands its time on to the next."""
        now = time.perf_counter()
        rest = [c for c, n in self.tasks_left.items() if n > 0 or c == check]
        f, left = self._factor(), self.left()
        after = sum(self.predicted.get(c, 0.0) * f for c in rest if c != check)
        after += self.task_estimate(check) * (max(1, self.tasks_left.get(check, 1)) - 1) + self._shared_left()
        if after + self.task_estimate(check) <= left:  # the rest fits as predicted: all the slack until it must start
            return left - after
        if check not in self.check_end:
            weight = {c: math.sqrt(max(MIN_SHARE_S, self.predicted.get(c, 0.0))) for c in rest}
            share = max(0.0, self.left()) * weight[check] / sum(weight.values())
            self.check_end[check] = now + share
        return max(0.0, self.check_end[check] - now) / max(1, self.tasks_left.get(check, 1))

    def task_estimate(self, check: str) -> float:
        """Predicted seconds of one task of ``check``: its prediction over its tasks, times the measured /
        predicted ratio of the checks run so far (what an optional unit of a kind not yet seen is taken to cost)."""
        return self.predicted.get(check, 0.0) / max(1, self.tasks_per_check.get(check, 1)) * self._factor()

    def left(self) -> float:
        """Seconds of the budget left (less the reserve for the report)."""
        from mlsafety.audit._budget import RESERVE

        assert self.budget is not None
        return self.budget * (1 - RESERVE) - (time.perf_counter() - self.start)

    def _factor(self) -> float:
        """Measured / predicted seconds of the checks run so far (1 before any), clamped to [0.25, 4]: what the
        allotments and the ETA scale the later checks' predictions by (a deadline stops what it misjudges).
        The shared forward passes are left out of both sides where the context measures them: they are paid
        by whichever task first needs them (the OOD check's training features, often), not by the first."""
        if not self.spent:
            return 1.0
        pred = self._evidence()
        own = max(0.0, sum(self.spent.values()) - (self._shared_paid() - self._shared_before))  # the tasks' own work
        return min(4.0, max(0.25, own / pred)) if pred > 0 else 1.0

    def _shared_paid(self) -> float:
        """Seconds of the shared forward passes paid so far (0 where the context does not measure them)."""
        return float(getattr(self.ctx, "shared_seconds", 0.0)) if self.ctx is not None else 0.0

    def _shared_left(self) -> float:
        """Predicted seconds of the shared forward passes not yet paid (0 where they are not measured apart)."""
        if self.ctx is None:
            return 0.0
        return max(0.0, self.predicted.get("forward passes", 0.0) - self._shared_paid())

    def _evidence(self) -> float:
        """Predicted seconds of the checks run so far (and of the shared passes where they are not measured
        apart: the first task is then taken to pay them)."""
        done = [c for c in self.spent if c in self.predicted]
        shared = self.predicted.get("forward passes", 0.0) if self.ctx is None else 0.0
        return sum(self.predicted[c] for c in done) + shared

    def _replan_factor(self) -> float:
        """The ratio re-planning scales the later checks' unit costs by (sizes, unlike deadlines, are not taken
        back). Slower than predicted: :meth:`_factor` as measured (cutting on any evidence is safe). Faster:
        believed only in proportion to its evidence, shrunk towards 1 with the predicted seconds of the checks
        still to come as the prior's weight, ``(ratio * done + ahead) / (done + ahead)``: a cheap first check
        that ran 4x faster than predicted must not multiply the sizes of the dear checks after it (one task's
        timing says little about another check's kernels), which then ran out of their shares and stopped
        short (fashion-cnn, --budget 90s: adversarial n re-planned 20 -> 113, four of its six settings then
        not measured)."""
        ratio = self._factor()
        if ratio >= 1.0 or not self.spent:
            return ratio
        done = self._evidence()
        ahead = sum(self.predicted[c] for c in self.predicted
                    if c not in self.spent and c in self.checks and c != "forward passes")  # fmt: skip
        return (ratio * done + ahead) / (done + ahead) if done + ahead > 0 else ratio

    def done(self, check: str, seconds: float) -> None:
        self.spent[check] = self.spent.get(check, 0.0) + seconds

    def eta(self) -> float:
        """Predicted seconds left: the checks' predictions scaled by the measured speed, spread over
        :attr:`workers` (at least the dearest check's rest: when the checks outnumber the workers a check's tasks
        travel together); with :attr:`deadlines` and a budget, at most what is left of it (the deadlines stop
        the tasks' loops there). Without deadlines (Ray) the budget bounds nothing: capped by it, the ETA of a
        run past its budget read "about 1 s left" while each task still took a minute."""
        f = self._factor()
        rest = [max(0.0, self.predicted[c] * f - self.spent.get(c, 0.0)) for c in self.predicted
                if c != "forward passes" and c in self.checks]  # fmt: skip
        left = sum(rest) + self._shared_left()
        if self.workers > 1:
            left = max(left / self.workers, max(rest, default=0.0))
        return left if self.budget is None or not self.deadlines else min(left, max(0.0, self.left()))

    def replan(self, check: str) -> None:
        """Choose the sizes of the knobs of checks not yet started to fit what is left of the budget."""
        if self.budget is None or not self.spent:
            return
        from mlsafety.audit._budget import RESERVE, allocate

        f = self._replan_factor()
        free = [k for k in self.plan.knobs.values() if k.check != TEST and k.check not in self.spent]
        free = [k for k in free if k.check in self.checks and (k.check, k.param) not in self.fixed]
        if not free:
            return
        elapsed = time.perf_counter() - self.start
        later = [c for c in self.plan.costs if c.check not in self.spent and c.check in self.checks]
        fixed = sum(c.fixed for c in later) * f
        free_keys = {(k.check, k.param) for k in free}
        bound = sum(k.unit * k.chosen for c in later for k in c.knobs if (k.check, k.param) not in free_keys) * f
        scaled = [type(k)(k.check, k.param, k.value, k.floor, k.unit * f) for k in free]
        allocate(scaled, self.budget * (1 - RESERVE) - elapsed - fixed - bound - self._shared_left())
        for k, s in zip(free, scaled, strict=True):
            if s.chosen != k.chosen and k.planned is None:
                k.planned = k.chosen  # what the plan lines printed before the first task said
            k.chosen = s.chosen
            c = self.checks[k.check]
            if k.param in c.params:
                c.params[k.param] = s.chosen
        self.plan.sync()
        self.predicted = {c.check: c.seconds() for c in self.plan.costs} | {
            c: self.predicted[c] for c in self.spent if c in self.predicted
        }


_STARTUP: dict[float, float] = {}


def _startup(budget: float | None, start: float) -> float:
    """Seconds this process ran before the audit that began at ``start`` (``perf_counter``): the command's
    start-up (Python, torch and the package imported), which a ``--budget`` on the command also pays.
    Counted for the first audit of a process only (a library caller running several pays the imports once);
    0 without a budget or where the process's start time cannot be read (outside Linux)."""
    if budget is None:
        return 0.0
    if start not in _STARTUP:
        age = 0.0
        if not _STARTUP:
            try:
                import os

                with open("/proc/self/stat") as f:
                    started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
                with open("/proc/uptime") as f:
                    age = float(f.read().split()[0]) - started - (time.perf_counter() - start)
            except (OSError, ValueError, IndexError):
                age = 0.0
        _STARTUP[start] = min(max(0.0, age), 600.0)
    return _STARTUP[start]


MIN_SHARE_S = 0.25
"""The least predicted seconds a check's share of the budget is weighted by (a check costed at nothing still
gets a share for its first unit of work)."""

BUDGET_CUT = "budget_cut"
"""The metric prefix of the row a task stored instead of its results when a budget cut it
(``budget_cut_<task key>``), in runs made before tasks got deadlines; read so their summaries still name
the cut tasks. A budget no longer cuts a task whole: see :func:`_budgeted`."""


def _budgeted(check: Check, task: Task, tracker: _Tracker, ctx: AuditContext) -> Task:
    """``task`` run with a deadline (``ctx.deadline``): its share of its check's share of the budget
    (:meth:`_Tracker.allot`). The long loops of the dear checks (attack batches, certified inputs, TTA
    attack settings, trigger-search steps...) stop at it after their first unit and store rows for the
    n they reached (a ``budget_stopped`` parameter says so); the deadline is cleared after the task."""

    def run() -> TaskResult:
        ctx.deadline = time.perf_counter() + tracker.allot(check.name)
        ctx.task_estimate = tracker.task_estimate(check.name)
        try:
            return task.run()
        finally:
            ctx.deadline, ctx.task_estimate = None, 0.0
            tracker.tasks_left[check.name] = max(0, tracker.tasks_left.get(check.name, 1) - 1)

    return Task(task.key, run, task.needs)


def _check_needs(work: list[tuple[Check, Task]]) -> None:
    """Every task's ``needs`` names a task of its own check that comes before it (a check's bug otherwise)."""
    seen: set[tuple[str, str]] = set()
    for check, task in work:
        for key in task.needs:
            if (check.name, key) not in seen:
                raise ValueError(f"task {check.name}/{task.key} needs {key!r}, which is not a task of {check.name!r} "
                                 "planned before it")  # fmt: skip
        seen.add((check.name, task.key))


def budget_stopped(rows: list[StoredRow]) -> list[str]:
    """What the tasks' deadlines under ``--budget`` stopped, one line per check: how many rows come from loops
    that stopped short (a ``budget_stopped`` parameter says how many of how many they reached) and how many
    hazards or settings were not measured at all (:data:`~mlsafety.audit._budget.BUDGET_NOT_MEASURED` rows)."""
    from mlsafety.audit._budget import BUDGET_NOT_MEASURED

    short: dict[str, int] = {}
    missing: dict[str, int] = {}
    for r in rows:
        if r.metric == BUDGET_NOT_MEASURED:
            missing[r.check] = missing.get(r.check, 0) + 1
        elif "budget_stopped" in r.params:
            short[r.check] = short.get(r.check, 0) + 1
    out = []
    for check in dict.fromkeys([*short, *missing]):
        parts = [f"{short[check]} rows at a reduced n"] if check in short else []
        parts += [f"{missing[check]} not measured"] if check in missing else []
        out.append(f"{check} ({', '.join(parts)})")
    return out


def budget_cuts(rows: list[StoredRow]) -> list[str]:
    """``check task`` of every task a budget cut (its :data:`BUDGET_CUT` rows; runs made before deadlines)."""
    return [f"{r.check} {r.params.get('task', '')}".strip() for r in rows if r.metric.startswith(BUDGET_CUT + "_")]


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


__all__ = [
    "BUDGET_CUT",
    "PLAN_CHECK",
    "AuditInterrupted",
    "AuditResult",
    "budget_cuts",
    "budget_stopped",
    "build_checks",
    "cap_data",
    "check_report_path",
    "default_db_path",
    "run_audit",
]
