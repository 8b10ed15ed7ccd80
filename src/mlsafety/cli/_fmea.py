"""``mlsafety fmea``: the systemic FMEA table of a stored run, and the scales it is scored on."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from mlsafety.cli._common import NonEmptyPath, friendly, open_store, out_console, warn_unfinished


@click.command()
@click.argument("run_id", required=False)
@click.option("--db", type=NonEmptyPath(dir_okay=False), help="Results database.")
@click.option("--scales", is_flag=True, help="Show the documented severity, occurrence and detection scales.")
@friendly
def fmea(run_id: str | None, db: str | None, scales: bool) -> None:
    """The FMEA table of RUN_ID (or `latest`): failure modes by RPN = S x O x D, from the results database."""
    from mlsafety.core import InputError

    if scales:
        _print_scales()
        return
    if run_id is None:
        raise InputError("give a RUN_ID (or `latest`) to show its FMEA table, or --scales for the scoring scales")
    from mlsafety.audit import fmea_report_table

    with open_store(db) as store:
        run = store.run(run_id)
        rows = [r for r in store.results(run.run_id) if r.check == "defence-in-depth"]
        warn_unfinished(store, run)
    from mlsafety.audit import BUDGET_NOT_MEASURED, NOT_APPLICABLE

    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r.hazard, {})[r.metric] = r
    # hazards the check stored no RPN for, with why (no inputs, the --budget deadline, ...): a table of the
    # measured hazards alone would read as if these had none
    unmeasured = [
        [h, str(m[k].params.get("reason", k))]
        for h, m in by.items()
        if "rpn" not in m
        for k in (NOT_APPLICABLE, BUDGET_NOT_MEASURED)
        if k in m
    ]
    found = fmea_report_table(by)
    if found is None:
        if unmeasured:
            h, why = unmeasured[0]
            raise InputError(f"run {run.run_id} has no FMEA rows: no hazard was measured ({h}: {why})")
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
    if unmeasured:
        missing = Table(title="Hazards not scored (not measured)", box=None)
        for header in ("hazard", "why"):
            missing.add_column(header, overflow="fold")
        for cells in unmeasured:
            missing.add_row(*cells)
        out_console.print(missing)


def _print_scales() -> None:
    """The severity defaults and the occurrence and detection scales, as the library defines them."""
    from mlsafety import systemic

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
