"""How the ``defence-in-depth`` check reads in the report: escaped-failure headlines, the per-hazard
table, the FMEA table (also ``mlsafety fmea RUN_ID``), the monitor choice, the deployment figure and
what was not measured, with why; and the Swiss-cheese plot (drawn during the run, by :func:`swiss_cheese_artifact`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mlsafety.audit._check import NOT_APPLICABLE, Artifact, Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.core import Hazard
from mlsafety.systemic import Outcome, swiss_cheese_png

PLOT_MAX_BARS = 30
"""Above this many hazards the Swiss-cheese plot pools each corruption's severities into one bar."""

CAPTION = (
    "Per hazard: inputs answered correctly (green), failures caught by the monitor (amber) and escaped "
    "failures (red); a black tick marks the escaped share under the monitor-aware attack."
)
CLEAN = str(Hazard.clean())
ESCAPED = ("escaped_failure_rate", "adaptive_escaped_failure_rate")


class DefenceInDepthView(View):
    """Headlines: escaped failures on clean data, the worst hazard, the deployment figure; tables:
    per hazard, FMEA, monitor choice, deployment, not measured (with why)."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        esc = [r for r in rows if r.metric in ESCAPED]
        clean = [r for r in esc if r.hazard == CLEAN and r.metric == "escaped_failure_rate"]
        worst = max(esc, key=lambda r: r.value) if esc else None
        if clean:
            monitor = clean[0].params.get("monitor", "")
            also = ", the worst hazard" if worst is clean[0] else ""  # one entry, not the same row twice
            label = f"Escaped failures, clean (monitor {monitor}{also})"
            out.append(Headline(label, clean[0], higher_is_better=False))
        if worst is not None and not (clean and worst is clean[0]):
            how = ", adaptive" if worst.metric == "adaptive_escaped_failure_rate" else ""
            out.append(Headline(f"Worst escaped failures ({worst.hazard}{how})", worst, higher_is_better=False))
        exp = [r for r in rows if r.metric == "expected_escaped_failure_rate"]
        if exp:
            out.append(Headline("Expected escaped failures (deployment)", exp[0], higher_is_better=False))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        by = by_hazard(rows)
        found = (
            _hazard_table(by),
            fmea_report_table(by),
            _validation_table(rows),
            _deployment_table(rows),
            _not_applicable_table(rows),
        )
        return [t for t in found if t] + late


def by_hazard(rows: Sequence[StoredRow]) -> dict[str, dict[str, StoredRow]]:
    """Stored rows grouped as ``{hazard: {metric: row}}`` (the form :func:`fmea_report_table` reads)."""
    by: dict[str, dict[str, StoredRow]] = {}
    for r in rows:
        by.setdefault(r.hazard, {})[r.metric] = r
    return by


def _hazard_table(by: Mapping[str, Mapping[str, StoredRow]]) -> Table | None:
    hazards = [h for h, m in by.items() if "escaped_failure_rate" in m]
    if not hazards:
        return None
    monitor = str(by[hazards[0]]["escaped_failure_rate"].params.get("monitor", ""))
    metrics = (
        "failure_rate",
        "caught_share",
        "escaped_failure_rate",
        "adaptive_escaped_failure_rate",
        "false_alarm_rate",
    )
    body = [[h, *(_cell(by[h].get(m)) for m in metrics), str(by[h]["escaped_failure_rate"].n)] for h in hazards]
    headers = ["hazard", "failure rate", "caught share", "escaped failures", "escaped (adaptive)", "false alarms", "n"]
    return Table(f"Escaped failures per hazard (monitor: {monitor}), exact 95% intervals", headers, body)


def fmea_report_table(by: Mapping[str, Mapping[str, StoredRow]]) -> Table | None:
    """The FMEA table (highest RPN first, with the raw probabilities) from stored rows grouped as
    ``{hazard: {metric: row}}`` (:func:`by_hazard`); None when the rows hold no FMEA."""
    hazards = sorted((h for h, m in by.items() if "rpn" in m), key=lambda h: (-by[h]["rpn"].value, h))
    if not hazards:
        return None
    body = []
    for rank, h in enumerate(hazards, 1):
        m = by[h]
        raw = m["rpn"].params
        miss = raw.get("miss_share")
        body.append(
            [
                str(rank),
                h,
                fmt_value(m["severity"].value),
                f"{_rank(m['occurrence'])} (p = {fmt_value(raw.get('failure_rate'))})",
                f"{_rank(m['detection'])} (missed = {'n/a' if miss is None else fmt_value(miss)})",
                _rank(m["rpn"]),
            ]
        )
    headers = ["rank", "hazard", "S (setting)", "O (failure rate)", "D (share of failures missed)", "RPN"]
    note = (
        "In brackets: the band range each score's measured proportion spans (its exact 95% interval); RPN's range "
        "is S x O x D at the ends of 97.5% ranges, so both ends hold together with probability at least 95%."
    )
    return Table("FMEA: failure modes by risk priority number RPN = S x O x D", headers, body, note)


def _rank(r: StoredRow) -> str:
    """A score with its band range, e.g. ``5 [5-6]`` (just the score when the range is one band)."""
    if r.ci_low is None or r.ci_high is None or r.ci_low == r.ci_high:
        return fmt_value(r.value)
    return f"{fmt_value(r.value)} [{fmt_value(r.ci_low)}-{fmt_value(r.ci_high)}]"


def _validation_table(rows: Sequence[StoredRow]) -> Table | None:
    val = sorted((r for r in rows if r.metric == "validation_escape"), key=lambda r: r.value)
    if not val:
        return None
    body = [
        [str(Hazard.parse(r.hazard).name), fmt_value(r.value), fmt_ci(r), "yes" if r.params.get("selected") else ""]
        for r in val
    ]
    title = "Monitor chosen on validation data (escaped rate on clean validation inputs and synthetic outliers)"
    note = (
        "The two sets weighted 1 - ood_share and ood_share (the check's parameter; one half each by default). "
        "Intervals: each set's exact interval, Bonferroni over the sets weighted (97.5% for two), combined with the "
        "same weights."
    )
    skipped = [r for r in rows if r.metric == "monitor_skipped"]
    if skipped:
        names = ", ".join(str(Hazard.parse(r.hazard).name) for r in skipped)
        note += f" Not tried: {names} ({skipped[0].params.get('reason', '')})."
    return Table(title, ["monitor", "validation escape", "95% CI", "chosen"], body, note)


def _deployment_table(rows: Sequence[StoredRow]) -> Table | None:
    dep = [r for r in rows if r.metric == "expected_escaped_failure_rate"]
    if not dep:
        return None
    body = [["expected escaped-failure rate", fmt_value(dep[0].value), fmt_ci(dep[0])]]
    return Table("Deployment, exposure-weighted (Bonferroni-adjusted exact interval)", ["", "value", "95% CI"], body)


def _not_applicable_table(rows: Sequence[StoredRow]) -> Table | None:
    """The hazards (and the deployment figure) stored as not applicable, each with its reason: a hazard without
    inputs, exposure on a hazard not measured. (What ``--budget`` left out has its own table.)"""
    skipped = [r for r in rows if r.metric == NOT_APPLICABLE and "modality" not in r.params]
    if not skipped:
        return None
    body = [[r.hazard, str(r.params.get("reason", ""))] for r in skipped]
    return Table("Not measured (no figure exists for these)", ["hazard", "why"], body)


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


# -- the Swiss-cheese plot (drawn during the run from per-input outcomes) ----------------------
def plot_bars(
    outcomes: Mapping[Hazard, Outcome], adaptive: Mapping[Hazard, Outcome]
) -> tuple[dict[str, Outcome], dict[str, Outcome]]:
    """Bars for the plot, labelled by hazard: with more than :data:`PLOT_MAX_BARS` hazards, the
    severities of each corruption are pooled into one bar (``corruption/<name> (all severities)``,
    all its inputs together)."""
    if len(outcomes) <= PLOT_MAX_BARS:
        return {str(h): o for h, o in outcomes.items()}, {str(h): a for h, a in adaptive.items()}
    pooled: dict[str, list[Outcome]] = {}
    label: dict[Hazard, str] = {}
    for h, o in outcomes.items():
        severities = h.kind == "corruption" and h.severity is not None
        label[h] = f"{h.family()} (all severities)" if severities else str(h)
        pooled.setdefault(label[h], []).append(o)
    shown = {
        k: v[0] if len(v) == 1 else Outcome(torch.cat([o.failed for o in v]), torch.cat([o.flagged for o in v]))
        for k, v in pooled.items()
    }
    return shown, {label[h]: a for h, a in adaptive.items() if h in label and label[h] == str(h)}


def swiss_cheese_artifact(
    outcomes: Mapping[Hazard, Outcome], adaptive: Mapping[Hazard, Outcome], monitor: str
) -> Artifact:
    """The Swiss-cheese plot of every hazard's outcome (and the adaptive ticks) as the report's artifact."""
    shown, shown_adaptive = plot_bars(outcomes, adaptive)
    png = swiss_cheese_png(shown, shown_adaptive, title=f"Defence in depth (monitor: {monitor})")
    return Artifact("swiss-cheese", png, caption=CAPTION)
