"""``mlsafety audit``: run every check, store every number, write one HTML report (and ``--resume``)."""

from __future__ import annotations

import shlex
import signal
import sys
from typing import Any, NoReturn

import click
from rich.table import Table

from mlsafety.cli._common import (
    DB_OPTION,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    NonEmptyPath,
    choose_threads,
    err_console,
    exit_code_for,
    friendly,
    line,
    out_console,
    print_path,
    print_wide,
    resume_command,
)
from mlsafety.cli._help import EntryDefault

CONFIG = "mlsafety.audit:AuditConfig"  # the settings' defaults live there, once
QUICK_BUDGET = "2m"
"""The budget ``--quick`` presets (unless --budget is given): its reduced profile's sizes are kept
wherever they fit, so on small models --quick is unchanged, and a large model still finishes."""


class RayAddress(click.ParamType):
    """``--ray-address``: a Ray cluster's address, never blank (``--ray-address "$RAY_HEAD"`` with the variable
    unset ran the audit here, or started a local Ray, as if the option were left out)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("the address is empty; give the Ray cluster's HOST:PORT (e.g. 10.0.0.5:6379) with "
                      "--executor ray, or leave it out", param, ctx)  # fmt: skip
        return value


RAY_ADDRESS_OPTION = click.option(
    "--ray-address", type=RayAddress(), help="Join this Ray cluster (with --executor ray)."
)


class ProgressLines:
    """The estimate before the first task, then a count and an ETA after each task: on a terminal in the
    status line, otherwise one plain line per check on stderr (CI logs); nothing under --json."""

    def __init__(self, quiet: bool, status: Any = None, asked_budget: bool = False) -> None:
        self.quiet, self.status, self.asked_budget = quiet, status, asked_budget

    def plan(self, plan: Any, tasks: int) -> None:
        from mlsafety.audit import fmt_duration

        if self.quiet:
            return
        if plan is None:
            line("estimate:", f"{tasks} tasks; the cost of text and language-model audits is not estimated",
                 style="bold")  # fmt: skip
            if self.asked_budget:
                line("warning:", "--budget sizes image audits only; this audit keeps its sample sizes (use "
                     "--max-samples or check parameters)", style="bold yellow")  # fmt: skip
            return
        about = f"about {fmt_duration(plan.seconds)} with these checks ({tasks} tasks)"
        if plan.budget is None:
            line("estimate:", f"{about}; --budget to change it (e.g. --budget 2m)", style="bold")
            return
        line("estimate:", f"{about}, fitted to --budget {fmt_duration(plan.budget)}", style="bold")
        for k in plan.cut():
            what = "test inputs (every check)" if k.check == "#test" else f"{k.check} {k.param}"
            line("  budget:", f"{what} {k.value} -> {k.chosen} (95% interval of a proportion at most "
                 f"{k.width:.2f} wide)", style="bold")  # fmt: skip
        if not plan.fits:
            line("warning:", "the budget is too small even at the smallest sample sizes; each task gets a deadline "
                 "from its check's share, its loops stop there after their headline unit, and the summary names "
                 "what they left out", style="bold yellow")  # fmt: skip

    def task(self, check: str, key: str, i: int, total: int, seconds: float, left: float | None) -> None:
        from mlsafety.audit import fmt_duration

        if self.quiet:
            return
        eta = f", about {fmt_duration(left)} left" if left is not None else ""
        if self.status is not None:
            self.status.update(f"[{i}/{total}] {check}: {key} ({seconds:.1f} s){eta}")
            return
        err_console.print(f"[{i}/{total}] {check}: {key} done ({seconds:.1f} s){eta}", soft_wrap=True)


def _gates(values: tuple[str, ...]) -> dict[str, float]:
    from mlsafety.audit import parse_gate_option

    return dict(parse_gate_option(v) for v in values)


@click.command()
@click.option(
    "--model",
    cls=EntryDefault,
    default_from=CONFIG,
    help="Zoo model name (e.g. minilm-mr, or the causal LM smollm2-135m), path/to/file.py:factory, or a folder "
    "with a saved transformers image classifier (and its preprocessor_config.json), sequence classifier or "
    "...ForCausalLM (and its tokenizer).",
)
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option(
    "--data",
    help="Test data: zoo name, .npz file (arrays x, y) or image folder; for a text model a zoo text set, .csv, "
    ".jsonl or a saved Hugging Face dataset folder.  [default: the zoo data of a zoo model, else digits]",
)
@click.option("--val", help="Validation data (same forms); default: the zoo split, or 30% held out of --data.")
@click.option("--train", "train_data", help="Training data (optional; detectors fit on it when given).")
@click.option(
    "--ood",
    multiple=True,
    help="OOD set (zoo name, .npz or folder), as near:PATH or far:PATH to set its group (without one: far; a zoo "
    "set keeps its own); repeatable. Default: the embedded sets made for the data.",
)
@click.option(
    "--ood-detector",
    metavar="NAME",
    help="The OOD detector the audit monitors: its figures are the OOD headlines and the plain metric names "
    "(ood/*/auroc); see `mlsafety ood list`.  [default: auto, chosen on held-out data]",
)
@click.option("--image-size", nargs=2, type=int, help="H W to resize image folders to.")
@click.option(
    "--classes",
    metavar="A,B,C",
    help="Class names in the order of the model's outputs: the label order of image folders (else a classes.txt / "
    "classes.json beside the data, else the folder names sorted) and the names of .npz labels 0..K-1.",
)
@click.option(
    "--head",
    metavar="NAME",
    help="The model's head module (its input is the features); default: the layer traced as returning the logits.",
)
@click.option("--channels", type=int, help="Convert image folders to 1 or 3 channels.  [default: the model's]")
@click.option("--text-column", cls=EntryDefault, default_from=CONFIG, help="Text column of text data files.")
@click.option(
    "--label-column",
    help="Label column of text data files.  [default: label; a language model's prompt file: no labels unless given]",
)
@click.option("--check", "checks", multiple=True, help="Run only this check; repeatable. Default: every check.")
@click.option("--config", "config_path", type=NonEmptyPath(dir_okay=False), help="TOML config file.")
@click.option("--seed", type=int, cls=EntryDefault, default_from=CONFIG, help="Run seed.")
@click.option(
    "--quick",
    is_flag=True,
    default=None,
    help="Reduced profile (fewer attacks, samples, detectors) with a preset budget of 2m (QUICK_BUDGET).",
)
@click.option(
    "--budget",
    metavar="DURATION",
    help="Time budget (90s, 5m, 1h): sample sizes are chosen per check so the whole audit fits; the report "
    "states every n used and the interval width it bought.  [--quick: 2m unless given]",
)
@click.option("--max-samples", type=int, help="At most N inputs of each data source (a seeded subset).")
@click.option("--device", cls=EntryDefault, default_from=CONFIG, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, cls=EntryDefault, default_from=CONFIG, help="Inputs per forward pass.")
@DB_OPTION
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Where to write the HTML report.")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished run with the same configuration.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where tasks run: this process, or Ray tasks (a local Ray on 127.0.0.1, or the cluster in "
    "--ray-address / RAY_ADDRESS). Needs the ray extra: pip install 'mlsafety[ray]'.",
)
@RAY_ADDRESS_OPTION
@click.option(
    "--reward",
    metavar="FILE.py:factory",
    help="Proxy reward of a language model: factory() returns scorer(texts) -> Tensor (N,). Needs --gold.",
)
@click.option("--gold", metavar="FILE.py:factory", help="Gold (trusted) reward, same form as --reward.")
@click.option("--fail-under", multiple=True, metavar="METRIC=VALUE", help="Exit 1 if METRIC < VALUE; repeatable.")
@click.option("--fail-over", multiple=True, metavar="METRIC=VALUE", help="Exit 1 if METRIC > VALUE; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results instead of the summary.")
@friendly
def audit(
    model: str | None,
    weights: str | None,
    data: str | None,
    val: str | None,
    train_data: str | None,
    ood: tuple[str, ...],
    ood_detector: str | None,
    image_size: tuple[int, int] | None,
    classes: str | None,
    head: str | None,
    channels: int | None,
    text_column: str | None,
    label_column: str | None,
    checks: tuple[str, ...],
    config_path: str | None,
    seed: int | None,
    quick: bool | None,
    budget: str | None,
    max_samples: int | None,
    device: str | None,
    batch_size: int | None,
    db: str | None,
    report_path: str | None,
    resume: bool,
    executor: str,
    ray_address: str | None,
    reward: str | None,
    gold: str | None,
    fail_under: tuple[str, ...],
    fail_over: tuple[str, ...],
    as_json: bool,
) -> None:
    """Audit a model: run every check, store every number, write one HTML report.

    With no arguments it audits the embedded digits-cnn on the digits data and all embedded OOD sets.
    A text model (`--model minilm-mr`, or a saved transformers classifier folder with --data) runs
    every check that applies to text; the others are stored as not applicable, with the reason. A causal
    language model (`--model smollm2-135m`, or a saved ...ForCausalLM folder) is audited on prompts
    (default: openings of mr test reviews) by the checks that take language models.
    Exit codes: 0 ok, 1 a gate failed, 2 bad usage or bad input.
    """
    import json

    from mlsafety.audit import AuditConfig, AuditInterrupted, load_config, make_executor, run_audit
    from mlsafety.core import Progress

    runner = make_executor(executor, ray_address)  # Ray missing or an address that does not answer: one line
    cfg = load_config(config_path) if config_path else AuditConfig()
    for name, value in (
        ("model", model),
        ("weights", weights),
        ("data", data),
        ("val", val),
        ("train", train_data),
        ("seed", seed),
        ("quick", quick),
        ("budget", budget),
        ("max_samples", max_samples),
        ("device", device),
        ("batch_size", batch_size),
        ("channels", channels),
        ("text_column", text_column),
        ("label_column", label_column),
        ("reward", reward),
        ("gold", gold),
        ("head", head),
    ):
        if value is not None:
            setattr(cfg, name, value)
    if classes is not None:
        cfg.classes = [c.strip() for c in classes.split(",")]
    if ood:
        cfg.ood = list(ood)
    if ood_detector is not None:
        cfg.check_params.setdefault("ood", {})["default"] = ood_detector
    if image_size:
        cfg.image_size = image_size
    if checks:
        cfg.checks = list(checks)
    if ood_detector is not None and cfg.checks is not None and "ood" not in cfg.checks:
        from mlsafety.core import InputError  # not the engine's "parameters given for check 'ood'": no flag named

        raise InputError(
            "--ood-detector chooses the ood check's monitored detector, but the checks selected leave ood out; "
            "add --check ood or drop --ood-detector"
        )
    cfg.fail_under.update(_gates(fail_under))
    cfg.fail_over.update(_gates(fail_over))

    asked_budget = cfg.budget is not None
    if cfg.quick and cfg.budget is None:
        cfg.budget = QUICK_BUDGET
    choose_threads()
    progress = Progress(enabled=False if as_json else None)
    status = err_console.status("auditing", spinner="dots") if progress.enabled else None
    shown = ProgressLines(quiet=as_json, status=status, asked_budget=asked_budget)

    if status is not None:
        status.start()
    result = None
    try:
        result = run_audit(
            cfg, db=db, report=report_path, resume=resume, progress=progress,
            on_plan=shown.plan, on_progress=shown.task, executor=runner,
        )  # fmt: skip
    except AuditInterrupted as stop:
        if status is not None:
            status.stop()
        _interrupted(stop, db)
    finally:
        if status is not None:
            status.stop()
        try:
            getattr(runner, "close", lambda: None)()  # a Ray this command started is shut down
        except KeyboardInterrupt as stop:  # a signal held while Ray shut down, raised once it is down
            if result is not None:  # else the command is already on its way out (an error or a stop said so)
                _stopped_after_run(result, getattr(stop, "signum", signal.SIGINT))
    if as_json:
        click.echo(json.dumps(_payload(result), indent=1))
    else:
        _print_summary(result)
    _warn_truncated(result.rows)
    if result.gate_failures:
        for f in result.gate_failures:
            line("gate failed:", str(f))
        sys.exit(EXIT_FAILED)


def _interrupted(stop: Any, db: str | None) -> NoReturn:
    """Say what a signal left stored and how to continue, then exit 128 + the signal's number."""
    name = signal.Signals(stop.signum).name
    if stop.run_id is None:
        line("interrupted:", f"stopped by {name} before the run started; nothing was stored")
    elif stop.complete:
        line(
            "interrupted:",
            f"stopped by {name} while writing the report; run {stop.run_id} is complete and stored; "
            f"write its report with: mlsafety report {stop.run_id}" + (f" --db {shlex.quote(db)}" if db else ""),
        )
    else:
        line(
            "interrupted:",
            f"stopped by {name}; {stop.stored if stop.stored >= 0 else 'the finished'} of {stop.total} tasks "
            f"of run {stop.run_id} are stored; "
            f"continue with: {resume_command(click.get_current_context())}",
        )
    sys.exit(exit_code_for(stop.signum))


def _stopped_after_run(result: Any, signum: int) -> NoReturn:
    """A signal that came once the run was complete and stored (while Ray shut down): say so, exit 128 + N."""
    report = f"; report: {result.report_path}" if result.report_path else ""
    line("interrupted:", f"stopped by {signal.Signals(signum).name} after the run; run {result.run_id} is complete "
         f"and stored{report}")  # fmt: skip
    sys.exit(exit_code_for(signum))


def _warn_truncated(rows: Any) -> None:
    """One warning line on stderr when texts of a hazard were cut at the model's maximum length."""
    from mlsafety.audit import TRUNCATED

    cut = {r.hazard: r for r in rows if r.metric == TRUNCATED and r.value > 0}
    if cut:
        counts = ", ".join(f"{h} {int(r.value)} of {r.n}" for h, r in cut.items())
        limit = next(iter(cut.values())).params.get("max_length")
        line(
            "warning:",
            f"texts longer than the model's maximum length ({limit} tokens) were truncated: {counts}",
            style="bold yellow",
        )


def _payload(result: Any) -> dict[str, Any]:
    """``audit --json``: the run, its report and every stored number with its kind."""
    return {
        "run_id": result.run_id,
        "report": str(result.report_path) if result.report_path else None,
        "results": [
            {
                "key": r.key,
                "check": r.check,
                "hazard": r.hazard,
                "metric": r.metric,
                "kind": r.kind,
                "value": r.value,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "n": r.n,
            }
            for r in result.rows
        ],
        "gate_failures": [str(f) for f in result.gate_failures],
    }


def _print_ood_notes(rows: Any) -> None:
    """The OOD checks' warnings (constructed sets used on data they were not made for, once per set) and
    the detectors the ood check could not run on the model."""
    warned = {r.hazard: r.params.get("message", "") for r in rows if r.metric == "warning_constructed_set"}
    for message in warned.values():
        err_console.print(f"Warning: {message}", soft_wrap=True)
    skipped = [str(r.params.get("detector")) for r in rows
               if r.check == "ood" and r.metric.startswith("skipped_") and "reason" in r.params]  # fmt: skip
    if skipped:
        out_console.print(f"OOD detectors not run on this model: {', '.join(skipped)} (why: in the report).",
                          soft_wrap=True)  # fmt: skip


def _print_summary(result: Any) -> None:
    """Each check's headline numbers, the count stored and the report's path."""
    from mlsafety.audit import CHECKS, fmt_ci, fmt_value

    by_check: dict[str, list[Any]] = {}
    for r in result.rows:
        by_check.setdefault(r.check, []).append(r)
    table = Table("metric", "value", "95% CI", "n", title=f"mlsafety audit {result.run_id}", box=None)
    for check, rows in by_check.items():
        heads = CHECKS.get(check).headlines(rows) if check in CHECKS else []
        for h in heads:
            table.add_row(h.row.key, fmt_value(h.row.value), fmt_ci(h.row), str(h.row.n or ""))
    print_wide(table)
    for note in getattr(result, "notes", []):  # what the audit decided about the model and data (input_notes)
        if note.get("warning"):
            err_console.print(f"Warning: {note['text']}", soft_wrap=True)
        elif note.get("kind") in ("head", "classes", "data"):
            label = {"classes": "Classes", "data": "Note"}.get(note["kind"], note.get("label", ""))
            out_console.print(f"{label}: {note.get('text', '')}", soft_wrap=True)
    if result.held_out is not None:
        n_val, n_all = result.held_out
        out_console.print(
            f"Validation: {n_val} of the {n_all} inputs of --data ({n_val / n_all:.0%}) were held out as validation "
            "data (no --val given); the test numbers use the other "
            f"{n_all - n_val}.",
            soft_wrap=True,
        )
    if result.plan is not None and result.plan.budget is not None:
        used = ", ".join(
            f"{'test inputs' if k.check == '#test' else k.check + ' ' + k.param} {k.chosen}"
            + (f" (of {k.value})" if k.chosen < k.value else "")
            + ("" if k.planned in (None, k.chosen) else f" (planned {k.planned}, re-planned from the measured speed)")
            for k in result.plan.knobs.values()
        )
        out_console.print(f"Sample sizes under the budget: {used}.", soft_wrap=True)
        from mlsafety.audit import budget_cuts, budget_stopped

        stopped = budget_stopped(result.rows)
        if stopped:  # every check ran; these loops stopped at their task's deadline (rows say the n reached)
            err_console.print(f"Stopped at the budget's deadlines: {', '.join(stopped)} (the report's rows say "
                              "which; a larger --budget or none measures the rest)", soft_wrap=True)  # fmt: skip
        cuts = budget_cuts(result.rows)
        if cuts:  # every size at its floor and still over: these tasks were not run (each stored a budget_cut row)
            err_console.print(
                f"Warning: cut by the budget (not run, {len(cuts)} tasks): {', '.join(cuts)}; "
                "run with a larger --budget or none for them",
                soft_wrap=True,
            )
    _print_ood_notes(result.rows)
    resumed = f", {result.resumed_tasks} tasks resumed from the store" if result.resumed_tasks else ""
    out_console.print(f"{len(result.rows)} numbers stored in {result.seconds:.1f} s{resumed}.")
    if result.report_path:
        print_path("Report: ", result.report_path)


@click.command("audit-many")
@click.argument("models", nargs=-1, required=True)
@click.option("--data", help="Test data for every model (same forms as audit --data); default: the zoo split.")
@click.option("--val", help="Validation data (same forms).")
@click.option("--ood", multiple=True, help="An OOD data set (repeatable), same forms as audit --ood.")
@click.option("--check", "checks", multiple=True, help="Run only this check; repeatable. Default: every check.")
@click.option("--config", "config_path", type=NonEmptyPath(dir_okay=False), help="TOML config file (shared).")
@click.option("--seed", type=int, help="Run seed (the same for every model).")
@click.option("--quick", is_flag=True, default=None, help="Reduced profile, as audit --quick.")
@click.option("--max-samples", type=int, help="At most N inputs of each data source (a seeded subset).")
@click.option("--batch-size", type=int, help="Inputs per forward pass.")
@DB_OPTION
@click.option("--report-dir", type=NonEmptyPath(file_okay=False), help="Write each run's report there (<run id>.html).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: the models one after another; ray: in parallel as Ray tasks.")  # fmt: skip
@RAY_ADDRESS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print each model's run id and status as JSON.")
@friendly
def audit_many(
    models: tuple[str, ...],
    data: str | None,
    val: str | None,
    ood: tuple[str, ...],
    checks: tuple[str, ...],
    config_path: str | None,
    seed: int | None,
    quick: bool | None,
    max_samples: int | None,
    batch_size: int | None,
    db: str | None,
    report_dir: str | None,
    executor: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Audit several models or checkpoints (MODEL as audit --model takes it), one run each.

    With --executor ray the models' tasks run in parallel on Ray; each run is stored like one of
    `mlsafety audit` (see `mlsafety runs`). A model refused for bad input is one line and does not stop
    the others; the exit code is then 2.
    """
    import json

    from mlsafety.audit import AuditConfig, load_config, make_executor, run_many
    from mlsafety.core import InputError

    runner = make_executor(executor, ray_address)
    cfg = load_config(config_path) if config_path else AuditConfig()
    for name, value in (("data", data), ("val", val), ("seed", seed), ("quick", quick),
                        ("max_samples", max_samples), ("batch_size", batch_size)):  # fmt: skip
        if value is not None:
            setattr(cfg, name, value)
    if ood:
        cfg.ood = list(ood)
    if checks:
        cfg.checks = list(checks)
    if cfg.quick and cfg.budget is None:
        cfg.budget = QUICK_BUDGET
    if executor == "local":
        choose_threads()

    def done(model: str, result: Any) -> None:
        if as_json:
            return
        if isinstance(result, InputError):
            line("error:", f"{model}: {result}")
        else:
            click.echo(f"{model}: run {result.run_id}, {len(result.rows)} numbers in {result.seconds:.1f} s")

    try:
        results = run_many(cfg, list(models), db=db, executor=runner, report_dir=report_dir, on_done=done)
    finally:
        getattr(runner, "close", lambda: None)()
    if as_json:
        click.echo(json.dumps([
            {"model": m, "run_id": None, "error": str(r)} if isinstance(r, InputError)
            else {"model": m, "run_id": r.run_id, "numbers": len(r.rows), "seconds": round(r.seconds, 2),
                  "report": str(r.report_path) if r.report_path else None}
            for m, r in zip(models, results, strict=True)
        ], indent=1))  # fmt: skip
    if any(isinstance(r, InputError) for r in results):
        sys.exit(EXIT_BAD_INPUT)
