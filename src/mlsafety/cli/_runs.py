"""The commands that read the results database: ``runs``, ``runs show``, ``report`` and ``compare``.

Each opens the database read-only, so it works on a read-only file and can never change it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from mlsafety.cli._common import (
    DB_OPTION,
    EXIT_FAILED,
    NonEmptyPath,
    friendly,
    line,
    open_store,
    out_console,
    print_path,
    print_wide,
    warn_unfinished,
)
from mlsafety.core import MlsafetyError


@click.group(invoke_without_command=True)
@DB_OPTION
@click.pass_context
@friendly
def runs(ctx: click.Context, db: str | None) -> None:
    """List stored runs (newest first); `runs show ID` shows one."""
    ctx.obj = db
    if ctx.invoked_subcommand is not None:
        return
    import time

    with open_store(db) as store:
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
    print_wide(table)


@runs.command("show")
@click.argument("run_id")
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@friendly
def runs_show(group_db: str | None, run_id: str, db: str | None, as_json: bool) -> None:
    """Every stored number of run RUN_ID (or `latest`); --db may come before or after `show`."""
    import json

    from mlsafety.audit import fmt_ci, fmt_value

    with open_store(db or group_db) as store:
        run = store.run(run_id)
        rows = store.results(run.run_id)
        warn_unfinished(store, run)
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
    print_wide(table)


@click.command()
@click.argument("run_id")
@click.option("--db", type=NonEmptyPath(dir_okay=False), help="Results database.")
@click.option("--out", type=NonEmptyPath(dir_okay=False, path_type=Path), help="Where to write the HTML.")
@friendly
def report(run_id: str, db: str | None, out: Path | None) -> None:
    """Rebuild the HTML report of RUN_ID (or `latest`) from the results database alone."""
    from mlsafety.audit import refuse_db_as_output, write_report
    from mlsafety.core import check_output_path

    if out is not None:  # a folder part that is a file: named, not mkdir's "File exists"
        check_output_path(out, what="report", example="path/to/report.html")
    with open_store(db) as store:
        if out is not None:
            refuse_db_as_output(out, store.path, "--out", "path/to/report.html")
        path = write_report(store, run_id, out)
        warn_unfinished(store, store.run(run_id))
    print_path("Report: ", path)


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--db", type=NonEmptyPath(dir_okay=False), help="Results database.")
@click.option("--all", "show_all", is_flag=True, help="Show every shared metric, not only the changed ones.")
@click.option(
    "--fail-on-change",
    is_flag=True,
    help="Exit 1 when a metric got worse (or changed, where its direction is unknown) beyond its intervals.",
)
@click.option(
    "--across-settings",
    is_flag=True,
    help="Count changes of checks whose settings differ between the runs (profile, budget, parameters) as real "
    "changes, for --fail-on-change too.  [default: shown as 'settings', never worse]",
)
@friendly
def compare(
    run_a: str, run_b: str, db: str | None, show_all: bool, fail_on_change: bool, across_settings: bool
) -> None:
    """Compare two runs metric by metric: deltas, and which changed beyond their 95% intervals.

    RUN_A and RUN_B are run ids, unique prefixes, `latest` or `previous` (the run before latest). When the
    runs were made with different settings (--quick, --budget, --max-samples, --seed, check parameters), the
    settings that differ are listed first, and the changes of the checks they touch are marked 'settings'
    and not counted as worse (unless --across-settings).
    """
    from mlsafety.audit import compare_rows, fmt_ci, fmt_value, row_setting_diff, settings_diff

    with open_store(db) as store:
        a, b = store.run(run_a), store.run(run_b)
        comparisons = compare_rows(store.results(a.run_id), store.results(b.run_id))
        for run in [a] if a.run_id == b.run_id else [a, b]:
            warn_unfinished(store, run)
    if not comparisons:
        raise MlsafetyError(f"runs {a.run_id} and {b.run_id} share no metric")
    diff = settings_diff(a.config, b.config)
    # rows whose own parameters say they measure something else (the ood check's plain keys: another monitored detector)
    by_row = {c.key: d for c in comparisons if (d := row_setting_diff(c.a, c.b)) is not None}
    row_lines = sorted({f"{k.split('/', 1)[0]} rows: {d}" for k, d in by_row.items()})
    if diff or row_lines:
        what = (
            "counted as real changes (--across-settings)"
            if across_settings
            else "marked 'settings', not counted as worse"
        )
        line(
            "warning:",
            f"runs {a.run_id} and {b.run_id} were made with different settings; changes in the checks they touch "
            f"are {what}:",
            style="bold yellow",
        )
        for d in diff.lines() + row_lines:
            line("  differs:", d, style="bold yellow")
    if (a.model, a.data) != (b.model, b.data):
        line("note:", f"run {a.run_id} audited {a.model} on {a.data}, run {b.run_id} {b.model} on {b.data}: "
                      "the changes below are the differences between them", style="bold cyan")  # fmt: skip
    if diff.sample_sizes:
        line("note:", "sample sizes the same --budget chose from each run's costs differ (the intervals carry "
                      "the precision; not a settings difference):", style="bold cyan")  # fmt: skip
        for d in diff.sample_sizes:
            line("  sample size:", d, style="bold cyan")

    def verdict(c: Any) -> str:
        if c.verdict and (diff.affects(c.a.check) or c.key in by_row) and not across_settings:
            return "settings"
        return str(c.verdict)

    table = Table("metric", a.run_id, b.run_id, "delta", "change", title="comparison", box=None)
    changed = [c for c in comparisons if c.significant]
    style = {
        "worse": Text("worse", "bold red"),
        "better": Text("better", "green"),
        "changed": Text("changed", "yellow"),
        "settings": Text("settings", "yellow"),
        "": Text(""),
    }
    for c in comparisons if show_all else changed:
        table.add_row(
            c.key,
            f"{fmt_value(c.a.value)} {fmt_ci(c.a)}",
            f"{fmt_value(c.b.value)} {fmt_ci(c.b)}",
            f"{c.delta:+.4g}",
            style[verdict(c)],
        )
    print_wide(table)
    worse = [c for c in changed if verdict(c) in ("worse", "changed")]
    by_settings = [c for c in changed if verdict(c) == "settings"]
    extra = f"; {len(by_settings)} in checks whose settings differ, not counted" if by_settings else ""
    out_console.print(
        f"{len(comparisons)} shared metrics, {len(changed)} changed beyond their 95% intervals "
        f"({len(worse)} worse or of unknown direction{extra})."
    )
    if fail_on_change and worse:
        sys.exit(EXIT_FAILED)
