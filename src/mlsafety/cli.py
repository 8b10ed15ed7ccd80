"""The ``mlsafety`` command: parses arguments, calls the library, prints. Nothing else lives here.

Exit codes: 0 ok, 1 a gate failed, 2 bad usage or bad input, 130 stopped by SIGINT (Ctrl-C),
143 stopped by SIGTERM.

User text (paths, names, messages) is printed literally: both consoles have Rich markup off, and
styles are applied with :class:`rich.text.Text` spans only.
"""

from __future__ import annotations

import functools
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlsafety.core import MlsafetyError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, markup=False, highlight=False)
out_console = Console(markup=False, highlight=False)


def _line(label: str, message: str, style: str = "bold red") -> None:
    """One styled label and a literal message on stderr, never wrapped into several lines."""
    text = Text.assemble((label, style), " ", " ".join(message.splitlines()))
    err_console.print(text, soft_wrap=True)


def friendly(fn: F) -> F:
    """Turn a user-caused :class:`MlsafetyError` into one red line and exit code 2.

    Only :class:`MlsafetyError` (bad input, an unusable database or output path, a refused resume)
    is caught; any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlsafetyError as exc:
            _line("error:", str(exc))
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is, so it can stop cleanly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


class _Main(click.Group):
    """The root group: keeps the raw arguments (for the `--resume` hint) and handles SIGINT / SIGTERM."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["mlsafety.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, _raise_stop)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value of a subcommand: one line, like bad input
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            _line("error:", f"{exc.format_message()} (see `{where} --help`)")
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            _line("interrupted:", f"stopped by {signal.Signals(signum).name}")
            ctx.exit(128 + signum)
        finally:
            for signum_, handler in old.items():
                signal.signal(signum_, handler)


def _resume_command(ctx: click.Context) -> str:
    """The command line that was run, with ``--resume`` added (literal, shell-quoted)."""
    root = ctx.find_root()
    argv = list(root.meta.get("mlsafety.argv", sys.argv[1:]))
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join([root.info_name or "mlsafety", *(shlex.quote(a) for a in argv)])


def _print_wide(table: Table) -> None:
    """Print a table at its natural width even past the terminal's: ids and keys are never cut."""
    width = table.__rich_measure__(out_console, out_console.options.update(width=100_000)).maximum
    if width <= out_console.width:
        out_console.print(table)
    else:
        Console(width=width, markup=False, highlight=False, file=out_console.file).print(table)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlsafety")
def main() -> None:
    """Measure how safe a trained PyTorch classifier is, and guard it."""


# -- zoo ---------------------------------------------------------------------------------------
@main.group()
def zoo() -> None:
    """Embedded models and datasets."""


@zoo.command("list")
def zoo_list() -> None:
    """Show the embedded models and datasets."""
    from mlsafety import zoo as zoo_lib

    table = Table("kind", "name", "description", box=None)
    for entry in zoo_lib.available():
        table.add_row(entry.kind, entry.name, entry.description)
    out_console.print(table)


@zoo.command("train")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the weights.")
@click.option("--seed", default=0, show_default=True, help="Training seed (the shipped weights use 0).")
@friendly
def zoo_train(name: str, out: Path | None, seed: int) -> None:
    """Re-train embedded model NAME with its recipe (deterministic on the CPU)."""
    from mlsafety import zoo as zoo_lib
    from mlsafety.core import Progress

    path = zoo_lib.train_model(name, out=out, seed=seed, progress=Progress())
    out_console.print(f"wrote {path}", soft_wrap=True)


# -- audit -------------------------------------------------------------------------------------
def _gates(values: tuple[str, ...]) -> dict[str, float]:
    from mlsafety.audit import parse_gate_option

    return dict(parse_gate_option(v) for v in values)


@main.command()
@click.option("--model", help="Zoo model name, or path/to/file.py:factory.  [default: digits-cnn]")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", help="Test data: zoo name, .npz file (arrays x, y) or image folder.  [default: digits]")
@click.option("--val", help="Validation data (same forms); default: the zoo split, or 30% held out of --data.")
@click.option("--train", "train_data", help="Training data (optional; detectors fit on it when given).")
@click.option(
    "--ood", multiple=True, help="OOD set (zoo name, .npz or folder); repeatable. Default: all embedded sets."
)
@click.option("--image-size", nargs=2, type=int, help="H W to resize image folders to.")
@click.option("--channels", type=int, help="Convert image folders to 1 or 3 channels.  [default: the model's]")
@click.option("--check", "checks", multiple=True, help="Run only this check; repeatable. Default: every check.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--seed", type=int, help="Run seed.  [default: 0]")
@click.option("--quick", is_flag=True, default=None, help="Reduced profile (fewer attacks, samples, detectors).")
@click.option("--device", help="cpu, cuda or cuda:N.  [default: cpu]")
@click.option("--batch-size", type=int, help="Inputs per forward pass.  [default: 256]")
@click.option(
    "--db", type=click.Path(dir_okay=False), help="Results database.  [default: $MLSAFETY_DB or ./mlsafety-runs.sqlite]"
)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Where to write the HTML report.")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished run with the same configuration.")
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
    image_size: tuple[int, int] | None,
    channels: int | None,
    checks: tuple[str, ...],
    config_path: str | None,
    seed: int | None,
    quick: bool | None,
    device: str | None,
    batch_size: int | None,
    db: str | None,
    report_path: str | None,
    resume: bool,
    fail_under: tuple[str, ...],
    fail_over: tuple[str, ...],
    as_json: bool,
) -> None:
    """Audit a model: run every check, store every number, write one HTML report.

    With no arguments it audits the embedded digits-cnn on the digits data and all embedded OOD sets.
    Exit codes: 0 ok, 1 a gate failed, 2 bad usage or bad input.
    """
    import json

    from mlsafety.audit import AuditConfig, load_config, run_audit
    from mlsafety.audit._engine import AuditInterrupted
    from mlsafety.core import Progress

    cfg = load_config(config_path) if config_path else AuditConfig()
    for name, value in (
        ("model", model),
        ("weights", weights),
        ("data", data),
        ("val", val),
        ("train", train_data),
        ("seed", seed),
        ("quick", quick),
        ("device", device),
        ("batch_size", batch_size),
        ("channels", channels),
    ):
        if value is not None:
            setattr(cfg, name, value)
    if ood:
        cfg.ood = list(ood)
    if image_size:
        cfg.image_size = image_size
    if checks:
        cfg.checks = list(checks)
    cfg.fail_under.update(_gates(fail_under))
    cfg.fail_over.update(_gates(fail_over))

    progress = Progress(enabled=False if as_json else None)
    status = err_console.status("auditing", spinner="dots") if progress.enabled else None

    def on_task(check: str, key: str, seconds: float) -> None:
        if status is not None:
            status.update(f"{check}: {key} done ({seconds:.1f} s)")

    if status is not None:
        status.start()
    try:
        result = run_audit(cfg, db=db, report=report_path, resume=resume, progress=progress, on_task=on_task)
    except AuditInterrupted as stop:
        if status is not None:
            status.stop()
        name = signal.Signals(stop.signum).name
        if stop.run_id is None:
            _line("interrupted:", f"stopped by {name} before the run started; nothing was stored")
        elif stop.complete:
            _line(
                "interrupted:",
                f"stopped by {name} while writing the report; run {stop.run_id} is complete and stored; "
                f"write its report with: mlsafety report {stop.run_id}" + (f" --db {shlex.quote(db)}" if db else ""),
            )
        else:
            _line(
                "interrupted:",
                f"stopped by {name}; {stop.stored if stop.stored >= 0 else 'the finished'} of {stop.total} tasks "
                f"of run {stop.run_id} are stored; "
                f"continue with: {_resume_command(click.get_current_context())}",
            )
        sys.exit(128 + stop.signum)
    finally:
        if status is not None:
            status.stop()

    if as_json:
        payload = {
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
        click.echo(json.dumps(payload, indent=1))
    else:
        _print_summary(result)
    if result.gate_failures:
        for f in result.gate_failures:
            _line("gate failed:", str(f))
        sys.exit(1)


def _print_summary(result: Any) -> None:
    from mlsafety.audit import CHECKS
    from mlsafety.audit._check import fmt_ci, fmt_value

    by_check: dict[str, list[Any]] = {}
    for r in result.rows:
        by_check.setdefault(r.check, []).append(r)
    table = Table("metric", "value", "95% CI", "n", title=f"mlsafety audit {result.run_id}", box=None)
    for check, rows in by_check.items():
        heads = CHECKS.get(check).headlines(rows) if check in CHECKS else []
        for h in heads:
            table.add_row(h.row.key, fmt_value(h.row.value), fmt_ci(h.row), str(h.row.n or ""))
    _print_wide(table)
    resumed = f", {result.resumed_tasks} tasks resumed from the store" if result.resumed_tasks else ""
    out_console.print(f"{len(result.rows)} numbers stored in {result.seconds:.1f} s{resumed}.")
    if result.report_path:
        out_console.print(Text.assemble("Report: ", (str(result.report_path.resolve()), "bold")), soft_wrap=True)


# -- runs, report, compare -------------------------------------------------------------------
def _open_store(db: str | None) -> Any:
    """The results database, opened read-only (SQLite ``mode=ro``): commands that only read it
    work on a read-only file or folder, and can never change it."""
    from mlsafety.audit import Store

    return Store(db, create=False, readonly=True)


def _warn_unfinished(store: Any, run: Any) -> None:
    """One warning line on stderr (so --json output keeps its shape) when ``run`` is not complete."""
    if run.status != "complete":
        tasks = len(store.done_tasks(run.run_id))
        _line(
            "warning:",
            f"run {run.run_id} is not complete (status: {run.status}): {tasks} tasks are stored; "
            "continue it with the same `mlsafety audit` command and --resume",
            style="bold yellow",
        )


DB_OPTION = click.option(
    "--db", type=click.Path(dir_okay=False), help="Results database.  [default: $MLSAFETY_DB or ./mlsafety-runs.sqlite]"
)


@main.group(invoke_without_command=True)
@DB_OPTION
@click.pass_context
@friendly
def runs(ctx: click.Context, db: str | None) -> None:
    """List stored runs (newest first); `runs show ID` shows one."""
    ctx.obj = db
    if ctx.invoked_subcommand is not None:
        return
    import time

    with _open_store(db) as store:
        counts = store.result_counts()
        table = Table("run", "created", "status", "model", "data", "seed", "numbers", box=None)
        for run in store.runs():
            table.add_row(
                run.run_id,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created)),
                run.status,
                run.model,
                run.data,
                str(run.seed),
                str(counts.get(run.run_id, 0)),
            )
    _print_wide(table)


@runs.command("show")
@click.argument("run_id")
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@friendly
def runs_show(group_db: str | None, run_id: str, db: str | None, as_json: bool) -> None:
    """Every stored number of run RUN_ID (or `latest`); --db may come before or after `show`."""
    import json

    from mlsafety.audit._check import fmt_ci, fmt_value

    with _open_store(db or group_db) as store:
        run = store.run(run_id)
        rows = store.results(run.run_id)
        _warn_unfinished(store, run)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"key": r.key, "kind": r.kind, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}
                    for r in rows
                ],
                indent=1,
            )
        )
        return
    table = Table("metric", "value", "95% CI", "n", title=f"run {run.run_id} ({run.status})", box=None)
    for r in rows:
        table.add_row(r.key, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n))
    _print_wide(table)


@main.command()
@click.argument("run_id")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the HTML.")
@friendly
def report(run_id: str, db: str | None, out: Path | None) -> None:
    """Rebuild the HTML report of RUN_ID (or `latest`) from the results database alone."""
    from mlsafety.audit import write_report

    with _open_store(db) as store:
        path = write_report(store, run_id, out)
        _warn_unfinished(store, store.run(run_id))
    out_console.print(Text.assemble("Report: ", (str(path.resolve()), "bold")), soft_wrap=True)


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database.")
@click.option("--all", "show_all", is_flag=True, help="Show every shared metric, not only the changed ones.")
@click.option(
    "--fail-on-change",
    is_flag=True,
    help="Exit 1 when a metric got worse (or changed, where its direction is unknown) beyond its intervals.",
)
@friendly
def compare(run_a: str, run_b: str, db: str | None, show_all: bool, fail_on_change: bool) -> None:
    """Compare two runs metric by metric: deltas, and which changed beyond their 95% intervals."""
    from mlsafety.audit import compare_rows
    from mlsafety.audit._check import fmt_ci, fmt_value

    with _open_store(db) as store:
        a, b = store.run(run_a), store.run(run_b)
        comparisons = compare_rows(store.results(a.run_id), store.results(b.run_id))
        for run in [a] if a.run_id == b.run_id else [a, b]:
            _warn_unfinished(store, run)
    if not comparisons:
        raise MlsafetyError(f"runs {a.run_id} and {b.run_id} share no metric")
    table = Table("metric", a.run_id, b.run_id, "delta", "change", title="comparison", box=None)
    changed = [c for c in comparisons if c.significant]
    style = {
        "worse": Text("worse", "bold red"),
        "better": Text("better", "green"),
        "changed": Text("changed", "yellow"),
        "": Text(""),
    }
    for c in comparisons if show_all else changed:
        table.add_row(
            c.key,
            f"{fmt_value(c.a.value)} {fmt_ci(c.a)}",
            f"{fmt_value(c.b.value)} {fmt_ci(c.b)}",
            f"{c.delta:+.4g}",
            style[c.verdict],
        )
    out_console.print(table)
    worse = [c for c in changed if c.verdict in ("worse", "changed")]
    out_console.print(
        f"{len(comparisons)} shared metrics, {len(changed)} changed beyond their 95% intervals "
        f"({len(worse)} worse or of unknown direction)."
    )
    if fail_on_change and worse:
        sys.exit(1)


# -- systemic: FMEA ------------------------------------------------------------------------------
@main.command()
@click.argument("run_id", required=False)
@click.option("--db", type=click.Path(dir_okay=False), help="Results database.")
@click.option("--scales", is_flag=True, help="Show the documented severity, occurrence and detection scales.")
@friendly
def fmea(run_id: str | None, db: str | None, scales: bool) -> None:
    """The FMEA table of RUN_ID (or `latest`): failure modes by RPN = S x O x D, from the results database."""
    from mlsafety import systemic
    from mlsafety.core import InputError

    if scales:
        sev = Table("hazard kind", "S (default)", title="Severity (config: [params.defence-in-depth] severity)")
        for kind, value in systemic.SEVERITY_DEFAULTS.items():
            sev.add_row(kind, str(value))
        sev.add_row("other kinds", str(systemic.DEFAULT_SEVERITY))
        occ = Table("O", "failure rate at least", title="Occurrence (from the measured failure rate)")
        for lowest, score in systemic.OCCURRENCE_TABLE:
            occ.add_row(str(score), f"{lowest:.3g}")
        occ.add_row("1", "below that (or none)")
        det = Table("D", "share of failures missed above", title="Detection (from the share the monitor misses)")
        for above, score in systemic.DETECTION_TABLE:
            det.add_row(str(score), f"{above:g}")
        det.add_row("1", "at or below that; no failure measured: 10")
        for t in (sev, occ, det):
            out_console.print(t)
        return
    if run_id is None:
        raise InputError("give a RUN_ID (or `latest`) to show its FMEA table, or --scales for the scoring scales")
    from mlsafety.audit.checks.defence_in_depth import fmea_report_table

    with _open_store(db) as store:
        run = store.run(run_id)
        rows = [r for r in store.results(run.run_id) if r.check == "defence-in-depth"]
        _warn_unfinished(store, run)
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r.hazard, {})[r.metric] = r
    found = fmea_report_table(by)
    if found is None:
        raise InputError(
            f"run {run.run_id} has no FMEA rows; audit with the defence-in-depth check (mlsafety audit --check ...)"
        )
    table = Table(title=f"{found.title} (run {run.run_id})", box=None)
    for header in found.headers:
        table.add_column(header, overflow="fold")
    for cells in found.rows:
        table.add_row(*cells)
    out_console.print(table)
    if found.note:
        out_console.print(found.note, markup=False, highlight=False)


# -- harden ------------------------------------------------------------------------------------
@main.command()
@click.option(
    "--model", "model_spec", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory."
)
@click.option("--weights", type=click.Path(dir_okay=False), help="Starting weights (.safetensors or .pt).")
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="Training data: a zoo dataset name (its train split) or an .npz file with arrays x, y.",
)
@click.option(
    "--method",
    type=click.Choice(["pgd", "trades"]),
    default="pgd",
    show_default=True,
    help="PGD adversarial training (Madry) or TRADES.",
)
@click.option("--eps", type=float, required=True, help="Training radius in [0, 1] pixel units, e.g. 0.1.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), help="Threat model.  [default: linf]")
@click.option("--steps", type=int, help="PGD steps per batch.  [default: 7]")
@click.option("--epochs", type=int, help="Training epochs.  [default: 40]")
@click.option("--lr", type=float, help="Adam learning rate.  [default: 1e-3]")
@click.option("--beta", type=float, help="TRADES robustness weight.  [default: 6]")
@click.option("--shift", type=int, default=0, show_default=True, help="Random shifts of up to N pixels (augmentation).")
@click.option("--from-scratch", is_flag=True, help="Re-initialise the model (seeded) instead of fine-tuning it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the hardened weights (.safetensors).",
)
@friendly
def harden(
    model_spec: str,
    weights: str | None,
    data: str,
    method: str,
    eps: float,
    norm: str | None,
    steps: int | None,
    epochs: int | None,
    lr: float | None,
    beta: float | None,
    shift: int,
    from_scratch: bool,
    seed: int,
    out: Path,
) -> None:
    """Train a hardened copy of a model against L-inf/L2 attacks and write it as .safetensors."""
    from mlsafety import zoo as zoo_lib
    from mlsafety.core import InputError, Progress, load_factory, load_npz, load_weights
    from mlsafety.robustness import harden as harden_lib

    if out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors, got {out.name}")
    model = load_factory(model_spec) if ":" in model_spec else zoo_lib.load_model(model_spec)
    if weights:
        load_weights(model, weights)
    train = load_npz(data) if data.endswith(".npz") else zoo_lib.load_dataset(data, "train")
    options = {"norm": norm, "steps": steps, "epochs": epochs, "lr": lr, "beta": beta}
    params: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "beta" in params and method != "trades":
        raise InputError("--beta applies to --method trades only")
    if shift:
        params["augment"] = lambda x, g: zoo_lib.random_shift(x, g, shift)
    hardened = harden_lib(
        model, train, method=method, from_scratch=from_scratch, seed=seed, eps=eps, progress=Progress(), **params
    )
    out_console.print(f"wrote {zoo_lib.save_weights(hardened, out)}", soft_wrap=True)


# -- trojans ----------------------------------------------------------------------------------
@main.group()
def trojans() -> None:
    """Trojan (backdoor) attacks, scanners and populations of models to judge scanners on."""


@trojans.command("population")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("trojans-population"),
    show_default=True,
    help="Folder for the weights and manifest.json.",
)
@click.option("--n", "n", default=20, show_default=True, help="Number of models (half clean, half trojaned).")
@click.option("--seed", default=0, show_default=True, help="Population seed (attacks, targets, training seeds).")
@click.option("--epochs", default=20, show_default=True, help="Training epochs per model.")
@friendly
def trojans_population(out: Path, n: int, seed: int, epochs: int) -> None:
    """Train a reproducible population of clean and trojaned digits CNNs (deterministic on the CPU)."""
    from mlsafety.core import InputError, Progress
    from mlsafety.monitoring.trojans import make_population

    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    members = make_population(out, n=n, seed=seed, epochs=epochs, progress=Progress())
    table = Table("model", "attack", "target", "clean acc", "attack success", box=None)
    for m in members:
        kind = m.attack if m.trojaned else f"clean (probe: {m.attack})"
        table.add_row(m.name, kind, str(m.target), f"{m.clean_accuracy:.3f}", f"{m.attack_success_rate:.3f}")
    out_console.print(table)
    out_console.print(f"wrote {len(members)} models and {out / 'manifest.json'}", soft_wrap=True)


# -- corruptions -------------------------------------------------------------------------------
@main.command()
@click.argument("source")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("corruptions.png"),
    show_default=True,
    help="Where to write the grid picture (PNG).",
)
@click.option(
    "--corruptions", "names", default="all", show_default=True, help="Comma-separated corruption names, or 'all'."
)
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Comma-separated severities (1-5).")
@click.option("--size", type=int, default=None, help="Resize so the shorter side has this many pixels.")
@click.option("--grey", is_flag=True, help="Convert the image to one channel first.")
@click.option(
    "--reference-size",
    type=float,
    default=None,
    help="Image side ImageNet-C's pixel lengths refer to (default: the published table nearest the image size).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the corruptions' random draws.")
@friendly
def corrupt(
    source: str,
    out: Path,
    names: str,
    severities: str,
    size: int | None,
    grey: bool,
    reference_size: float | None,
    seed: int,
) -> None:
    """Write a grid of every corruption at every severity for one image SOURCE (a file or zoo:digits:0)."""
    from mlsafety.core import InputError
    from mlsafety.robustness import corruptions as corr

    chosen = corr.available() if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        corr.CORRUPTIONS.get(n)
    try:
        sevs = [int(s) for s in severities.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}") from None
    if not sevs or any(s not in corr.SEVERITIES for s in sevs):
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}")
    image = corr.read_image(source, size=size, grey=grey)
    fig = corr.grid_figure(image, chosen, sevs, seed=seed, reference_size=reference_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    out_console.print(f"wrote {out} ({len(chosen)} corruptions x {len(sevs)} severities)", soft_wrap=True)


# -- ood (monitoring) ------------------------------------------------------------------------------
OOD_EVAL_DEFAULT = ("msp", "energy", "max-logit", "knn", "mahalanobis", "vim", "react")


@main.group("ood")
def ood_group() -> None:
    """OOD detectors: list them, or measure them on a model and data."""


@ood_group.command("list")
def ood_list() -> None:
    """Show every registered OOD detector, what it needs and the method it implements."""
    import inspect

    from mlsafety.monitoring import ood

    table = Table("name", "needs", "fit", "method", box=None)
    for name in ood.available():
        cls = ood.DETECTORS.get(name)
        doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        table.add_row(name, ", ".join(sorted(cls.needs)), "yes" if cls.requires_fit else "no", first)
    out_console.print(table)


@ood_group.command("eval")
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", default="digits", show_default=True, help="In-distribution test data (zoo name, .npz, folder).")
@click.option("--train", help="In-distribution data to fit the detectors on (default: the zoo train split, else val).")
@click.option("--ood", "ood_sets", multiple=True, help="OOD set (zoo name, .npz or folder); repeatable. Default: all.")
@click.option(
    "--detector",
    "-d",
    "detectors",
    multiple=True,
    help=f"Detector name; repeatable (see `mlsafety ood list`). Default: {', '.join(OOD_EVAL_DEFAULT)}.",
)
@click.option("--n-boot", default=500, show_default=True, type=click.IntRange(min=10), help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def ood_eval(model: str, weights: str | None, data: str, train: str | None, ood_sets: tuple[str, ...],
             detectors: tuple[str, ...], n_boot: int, seed: int, as_json: bool) -> None:  # fmt: skip
    """Fit detectors on in-distribution data and report AUROC, AUPR-In/Out and FPR@95 per OOD set.

    FPR@95 ID+ is the share of OOD inputs accepted at the threshold that keeps 95% of the
    in-distribution inputs (ODIN, OpenOOD v1.0); FPR@95 OOD+ the share of in-distribution inputs
    flagged at the threshold that catches 95% of the OOD inputs (OpenOOD v1.5, pytorch-ood).
    Intervals are seeded 95% bootstrap intervals.
    """
    import json

    from mlsafety.audit._inputs import AuditConfig, prepare_inputs
    from mlsafety.monitoring import ood

    names = list(detectors) or list(OOD_EVAL_DEFAULT)
    for name in names:
        ood.DETECTORS.get(name)  # an unknown name fails before any work, with a suggestion
    config = AuditConfig(model=model, weights=weights, data=data, train=train, ood=list(ood_sets) or None, seed=seed)
    clf, audit_data = prepare_inputs(config)  # the audit's validation: labels, probe pass, finite logits
    sets = {n: d.x for n, d in audit_data.ood.items()}
    result = ood.evaluate(names, clf, audit_data.fit, audit_data.test.x, sets, n_boot=n_boot, seed=seed)
    if as_json:
        out = {s: {d: {m: e.__dict__ for m, e in ms.items()} for d, ms in ds.items()} for s, ds in result.items()}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(
        "OOD set", "detector", "AUROC", "95% CI", "AUPR-In", "AUPR-Out", "FPR@95 ID+", "FPR@95 OOD+", box=None
    )
    for set_name, by_det in result.items():
        for det, m in sorted(by_det.items(), key=lambda kv: -kv[1]["auroc"].value):
            auc = m["auroc"]
            table.add_row(
                set_name,
                det,
                f"{auc.value:.4f}",
                f"[{auc.ci_low:.4f}, {auc.ci_high:.4f}]",
                f"{m['aupr_in'].value:.4f}",
                f"{m['aupr_out'].value:.4f}",
                f"{m['fpr95_id_positive'].value:.4f}",
                f"{m['fpr95_ood_positive'].value:.4f}",
            )
    out_console.print(table)
    out_console.print(
        f"fitted on {audit_data.fit.name} ({len(audit_data.fit)} inputs); "
        f"in-distribution: {audit_data.test.name} ({len(audit_data.test)} inputs)",
        highlight=False,
    )


# -- certified robustness and transparency ------------------------------------------------------
@main.command()
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", default="digits", show_default=True, help="Test data (zoo name, .npz file or image folder).")
@click.option(
    "--sigma",
    default=0.25,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Noise standard deviation in [0, 1] pixel units.",
)
@click.option("--n0", default=100, show_default=True, type=click.IntRange(min=1), help="Selection samples per input.")
@click.option(
    "--n",
    "n",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Estimation samples per input (the most, with --sequential).",
)
@click.option(
    "--alpha",
    default=0.001,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Failure probability of each certificate.",
)
@click.option("--inputs", default=100, show_default=True, type=click.IntRange(min=1), help="Test inputs to certify.")
@click.option(
    "--radius",
    "radii",
    multiple=True,
    type=click.FloatRange(min=0),
    help="L2 radius to report; repeatable.  [default: 0 0.25 0.5 0.75 1]",
)
@click.option("--denoiser", help="Zoo denoiser put before the model (denoised smoothing), e.g. digits-denoiser-25.")
@click.option(
    "--sequential",
    "target",
    type=click.FloatRange(min=0),
    help="Certify sequentially, stopping each input once its certificate at this radius is decided.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the noise.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def certify(model: str, weights: str | None, data: str, sigma: float, n0: int, n: int, alpha: float, inputs: int,
            radii: tuple[float, ...], denoiser: str | None, target: float | None, seed: int,
            as_json: bool) -> None:  # fmt: skip
    """Certified L2 accuracy of the Gaussian-smoothed model (Cohen et al. 2019) on test inputs."""
    import json

    from mlsafety import zoo as zoo_lib
    from mlsafety.audit._inputs import AuditConfig, prepare_inputs
    from mlsafety.core import generator
    from mlsafety.metrics import proportion
    from mlsafety.robustness.smoothing import ABSTAIN, SmoothedClassifier

    clf, checked = prepare_inputs(AuditConfig(model=model, weights=weights, data=data, ood=[], seed=seed))
    test = checked.test
    x, y = test.x[:inputs], test.y[:inputs]
    den = zoo_lib.load_model(denoiser).to(clf.device) if denoiser else None
    smoothed = SmoothedClassifier(clf, clf.num_classes, sigma, denoiser=den)
    g = generator(seed, "cli-certify", sigma)
    if target is None:
        cert = smoothed.certify(x, n0, n, alpha, generator=g)
    else:
        cert = smoothed.certify_sequential(x, n0, n, alpha, radius=target, generator=g)
    rows = []
    for r in radii or (0.0, 0.25, 0.5, 0.75, 1.0):
        est = proportion(cert.certified_accuracy(y, r).cpu())
        rows.append({"radius": r, "certified_accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})
    abstain = float((cert.prediction == ABSTAIN).double().mean())
    samples = float(cert.samples.double().mean())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "sigma": sigma,
                    "n0": n0,
                    "n": n,
                    "alpha": alpha,
                    "inputs": len(y),
                    "rows": rows,
                    "abstain_rate": abstain,
                    "mean_samples": samples,
                },
                indent=2,
            )
        )
        return
    table = Table("L2 radius", "certified accuracy", "95% CI", box=None)
    for row in rows:
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        table.add_row(f"{row['radius']:g}", f"{row['certified_accuracy']:.3f}", ci)
    out_console.print(table)
    out_console.print(
        f"{len(y)} inputs, sigma {sigma:g}, abstained on {abstain:.1%}, "
        f"{samples:.0f} estimation samples per input on average",
        highlight=False,
    )


@main.group("explain")
def explain_group() -> None:
    """Attribution methods: list them, or run their sanity checks on a model."""


@explain_group.command("list")
def explain_list() -> None:
    """Show every registered attribution method."""
    import inspect

    from mlsafety.monitoring import transparency as tr

    table = Table("name", "method", box=None)
    for name in tr.available():
        doc = inspect.getdoc(tr.ATTRIBUTIONS.get(name)) or ""
        table.add_row(name, " ".join(doc.split("\n\n")[0].split()))
    out_console.print(table)


@explain_group.command("sanity")
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", default="digits", show_default=True, help="Test data (zoo name, .npz file or image folder).")
@click.option("--method", "-m", "methods", multiple=True, help="Attribution method; repeatable. Default: all.")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["cascading", "independent"]),
    help="Randomisation test; repeatable.  [default: cascading independent]",
)
@click.option("--inputs", default=16, show_default=True, type=click.IntRange(min=1), help="Test inputs to explain.")
@click.option("--threshold", default=0.5, show_default=True, help="Rank correlation below which maps count as changed.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def explain_sanity(model: str, weights: str | None, data: str, methods: tuple[str, ...], modes: tuple[str, ...],
                   inputs: int, threshold: float, as_json: bool) -> None:  # fmt: skip
    """Sanity checks (Adebayo et al. 2018): do the maps change when the model's layers are re-initialised?"""
    import json

    from mlsafety.audit._inputs import AuditConfig, prepare_inputs
    from mlsafety.monitoring import transparency as tr

    names = list(methods) or tr.available()
    for name in names:
        tr.ATTRIBUTIONS.get(name)  # an unknown name fails before any work, with a suggestion
    clf, checked = prepare_inputs(AuditConfig(model=model, weights=weights, data=data, ood=[]))
    x = checked.test.x[:inputs]
    results = [
        tr.sanity_check(tr.create(name), clf, x, mode=mode, threshold=threshold)
        for name in names
        for mode in (modes or ("cascading", "independent"))
    ]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "method": r.method,
                        "mode": r.mode,
                        "spearman": r.score,
                        "passed": r.passed,
                        "ssim": float(r.ssim.mean()),
                    }
                    for r in results
                ],
                indent=2,
            )
        )
        return
    table = Table("method", "test", "Spearman", "SSIM", "verdict", box=None)
    for r in results:
        ssim = r.ssim.mean(dim=0).mean() if r.mode == "independent" else r.ssim[-1].mean()
        table.add_row(r.method, r.mode, f"{r.score:.3f}", f"{float(ssim):.3f}", "pass" if r.passed else "FAIL")
    out_console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
