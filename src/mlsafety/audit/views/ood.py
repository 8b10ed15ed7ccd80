"""How the ``ood`` check reads in the report: the monitored detector's AUROC on the first OOD sets (keys
that name the detector), how it was chosen, the ranking of every detector, near vs far OOD (pooled
sets) per detector, the detectors that could not run and why, and warnings about resized constructed sets."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, fmt_ci, fmt_value
from mlsafety.audit.views.ood_basic import (
    OODBasicView,
    constructed_table,
    detector_metric,
    plain_headlines,
    ranking_table,
)

MONITORED = "monitored_detector"
"""The metric of the row that names the monitored detector (a ``count``: how many detectors it was
chosen among; params ``detector``, ``chosen``, ``rule``, ``selection_auroc``)."""

REJECT_METRICS = ("aurc", "augrc", "combined_risk")
"""Learning to reject meets OOD detection, per detector (``<detector>_aurc`` ...): AURC and AUGRC of rejecting
the model's mistakes on the test data (hazard ``clean``) and, per OOD set, the combined risk (lower is better)."""

SKIPPED_PREFIX = "skipped_"
"""The metric prefix of the row of a detector the check could not run (a ``decision``; params
``detector``, ``reason``)."""


class OODView(OODBasicView):
    """Headlines: the monitored detector's AUROC on (at most) three OOD sets; tables: the ranking, the
    monitored detector and how it was chosen, AUROC per detector on each pooled group of sets (rows
    whose params list their ``sets``), the detectors not run, the warnings."""

    headline_label = "OOD AUROC ({detector})"
    ranking_title = "Detectors ranked by mean AUROC over the OOD sets (OOD = positive)"

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return plain_headlines(rows, cls.headline_label)[:3]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        tables = ranking_table(rows, title or cls.ranking_title) + monitor_table(rows)
        groups = [r for r in rows if "sets" in r.params and r.metric == _auroc_metric(r)]
        if groups:
            kinds = sorted({r.hazard for r in groups})
            dets = list(dict.fromkeys(r.params["detector"] for r in groups))
            val = {(r.params["detector"], r.hazard): r for r in groups}
            body = [[d, *[_cell(val.get((d, k))) for k in kinds]] for d in dets]
            tables.append(Table("Near vs far OOD (pooled sets): AUROC [95% CI]", ["detector", *kinds], body))
        return tables + reject_table(rows) + skipped_table(rows) + constructed_table(rows)


def reject_table(rows: Sequence[StoredRow]) -> list[Table]:
    """Every detector on both tasks: misclassification rejection (AURC, AUGRC on the test data) next to the
    combined risk on each OOD set, so a monitor can be picked for the mix of inputs expected."""
    own = [r for r in rows if "ood_share" in r.params and r.params.get("detector")]
    if not own:
        return []
    dets = list(dict.fromkeys(str(r.params["detector"]) for r in own))
    sets = list(dict.fromkeys(r.hazard for r in own if r.hazard != "clean"))
    val = {(str(r.params["detector"]), r.hazard, r.metric): r for r in own}

    def cell(d: str, hazard: str, measure: str) -> str:
        r = val.get((d, hazard, detector_metric(d, measure)))
        return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"

    body = [[d, cell(d, "clean", "aurc"), cell(d, "clean", "augrc"), *[cell(d, h, "combined_risk") for h in sets]]
            for d in dets]  # fmt: skip
    body.sort(key=lambda row: float(row[1].split()[0]) if row[1] else float("inf"))
    r0 = own[0]
    note = (f"Combined risk: the share of all arriving inputs answered wrongly or answered although OOD, when a share "
            f"{r0.params['ood_share']:g} of them is OOD and the threshold flags at most "
            f"{r0.params['false_alarm_rate']:g} of the correct answers (Learning to reject meets OOD; lower is "
            "better). Sorted by AURC.")  # fmt: skip
    head = ["detector", "AURC (mistakes)", "AUGRC", *[f"combined risk {h}" for h in sets]]
    return [Table("Learning to reject meets OOD: each detector on both tasks [95% CI]", head, body, note)]


def monitor_table(rows: Sequence[StoredRow]) -> list[Table]:
    """The monitored detector, how it was chosen and, when chosen on held-out data, the candidates'
    mean AUROC on the selection halves (the best five)."""
    chosen = [r for r in rows if r.metric == MONITORED]
    if not chosen:
        return []
    r = chosen[0]
    selection = dict(r.params.get("selection_auroc") or {})
    best = sorted(selection.items(), key=lambda kv: -float(kv[1]))[:5]  # the store hands params back key-sorted
    shown = ", ".join(f"{d} {fmt_value(v)}" for d, v in best)
    body = [[str(r.params.get("detector", "")), str(r.params.get("rule", "")), shown]]
    note = "The scorecard and the plain metric names (ood/<set>/auroc, the gate `ood/*/auroc`) show this detector."
    return [Table("Monitored detector", ["detector", "how it was chosen", "selection-half mean AUROC"], body, note)]


def skipped_table(rows: Sequence[StoredRow]) -> list[Table]:
    """The detectors the check could not run on this model, with why."""
    body = [[str(r.params.get("detector", "")), str(r.params.get("reason", ""))]
            for r in rows if r.metric.startswith(SKIPPED_PREFIX) and "reason" in r.params]  # fmt: skip
    return [Table("Detectors not run on this model", ["detector", "why"], body)] if body else []


def _auroc_metric(r: StoredRow) -> str | None:
    """The metric of the AUROC of the row's detector (None: the row names no detector)."""
    det = r.params.get("detector")
    return None if det is None else detector_metric(det, "auroc")


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"
