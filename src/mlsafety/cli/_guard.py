"""``mlsafety guard export RUN_ID --out DIR``: ship the audit's chosen monitor with the model."""

from __future__ import annotations

import click

from mlsafety.cli._common import DB_OPTION, Finite, NonEmptyPath, friendly, open_store, out_console
from mlsafety.guard import DriftAlarm


@click.group("guard")
def guard_group() -> None:
    """Export the monitor an audit chose, with the model, as a runtime guard (`mlsafety serve` serves it)."""


@guard_group.command("export")
@click.argument("run_id")
@click.option("--out", "out", required=True, type=NonEmptyPath(file_okay=False), help="Directory to write.")
@click.option("--arl", default=1000.0, show_default=True, type=Finite(min=1, min_open=True, max=DriftAlarm.MAX_ARL),
              help="Drift alarm level: mean in-distribution inputs before a false alarm, at least.")  # fmt: skip
@DB_OPTION
@friendly
def export(run_id: str, out: str, arl: float, db: str | None) -> None:
    """Write RUN_ID's (or `latest`) model and defence-in-depth monitor to a guard directory."""
    from mlsafety.guard import export_guard

    with open_store(db) as store:
        result = export_guard(store, run_id, out, arl=arl)
    out_console.print(f"guard for run {result.run_id}: monitor {result.monitor.name} -> {result.out}")
    out_console.print(f"state: {result.state}")
    out_console.print(f"model fingerprint: {result.fingerprint}")
