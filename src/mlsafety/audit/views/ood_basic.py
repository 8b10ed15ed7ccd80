"""How the OOD checks (``ood-basic``, ``ood``) read in the report: the AUROC scorecard entries, the
ranking of detectors, and the layout of the score histograms and ROC curves (drawn during the run,
from tensors, by :func:`histograms_png` and :func:`roc_png`).

A detector's figures are stored under metric names that fold the detector in (``max_logit_auroc``):
:func:`detector_metric` is the one function that builds them, and views find a row by building the
name from the row's ``params["detector"]``, never by splitting a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks._common import metric_name
from mlsafety.core import Hazard
from mlsafety.metrics import OOD_METRICS

FPR_NOTE = (
    "FPR@95 is stored in both conventions: fpr95_id_positive is the share of OOD inputs accepted at the threshold "
    "that keeps 95% of in-distribution inputs (in-distribution = positive: ODIN, OpenOOD v1.0), fpr95_ood_positive "
    "the share of in-distribution inputs flagged at the threshold that catches 95% of OOD inputs (OOD = positive: "
    "OpenOOD v1.5, pytorch-ood); compare each with a published table of the same convention. AUROC treats OOD "
    "inputs as positives; AUPR-In and AUPR-Out as in OpenOOD."
)

FPR_TABLE_NOTE = (
    "FPR@95 ID+ (fpr95_id_positive): share of OOD inputs accepted at the threshold that keeps 95% of the test "
    "inputs (in-distribution = positive; ODIN, OpenOOD v1.0). FPR@95 OOD+ (fpr95_ood_positive): share of test "
    "inputs flagged at the threshold that catches 95% of the OOD inputs (OOD = positive; OpenOOD v1.5, "
    "pytorch-ood). Lower is better for both; they differ, so compare each with a table of the same convention."
)

_OOD = Hazard("ood")
"""Every OOD set (``ood/<set>`` is within it)."""

_NOT_HYPER = ("detector", "kind", "sets", "tuned_on", "monitored", "inputs")
"""Row params that describe the row, not the detector's hyper-parameters."""

CONSTRUCTED = "warning_constructed_set"
"""The metric of the warning row of an OOD set the zoo constructed for other data (a ``decision``;
params ``made_for``, ``made_at``, ``used_at``, ``message``)."""


def detector_metric(detector: str, measure: str) -> str:
    """The row metric of a detector's figure: ``detector_metric("max-logit", "auroc")`` is
    ``max_logit_auroc`` (the default detector's figures are also stored under the plain ``measure``)."""
    return metric_name(detector, measure)


def ood_set(row: StoredRow) -> str | None:
    """The OOD set a row measures (``letters`` for hazard ``ood/letters``); None for other hazards."""
    hazard = Hazard.parse(row.hazard)
    return hazard.name if hazard.name is not None and hazard.within(_OOD) else None


class OODBasicView(View):
    """Headlines: the default detector's AUROC on each OOD set; tables: detectors ranked by mean AUROC,
    and the warnings about constructed sets resized for the model."""

    headline_label = "OOD AUROC ({detector})"
    ranking_title = "Detectors ranked by mean AUROC (OOD = positive)"

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return plain_headlines(rows, cls.headline_label)

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        return ranking_table(rows, title or cls.ranking_title) + constructed_table(rows)


def plain_headlines(rows: Sequence[StoredRow], label: str) -> list[Headline]:
    """One scorecard entry per OOD set: the default (monitored) detector's AUROC, shown by the row whose
    key names the detector (``ood/ood/letters/knn_auroc``), found from the plain ``auroc`` row's
    ``detector`` param; a run stored before the per-detector rows keeps its plain row.

    ``label`` may name the detector as ``{detector}``, filled from the row's params (the ``ood``
    check's monitored detector differs per model: named by the user or chosen on held-out data)."""
    by_key = {(r.hazard, r.metric): r for r in rows}
    out = []
    for r in rows:
        if r.metric != "auroc" or ood_set(r) is None:
            continue
        det = r.params.get("detector")
        named = by_key.get((r.hazard, detector_metric(det, "auroc"))) if isinstance(det, str) else None
        out.append(Headline(f"{label.format(detector=det or '?')} {ood_set(r)}", named or r))
    return out


def constructed_table(rows: Sequence[StoredRow]) -> list[Table]:
    """The warnings of constructed OOD sets used on data they were not made for (none: no table)."""
    warned = [r for r in rows if r.metric == CONSTRUCTED]
    if not warned:
        return []
    body = [
        [str(ood_set(r)), ", ".join(r.params.get("made_for") or []) or "no particular data",
         str(r.params.get("made_at", "")), str(r.params.get("used_at", ""))]
        for r in warned
    ]  # fmt: skip
    note = (
        "Warning: these OOD sets were constructed for other data (and resized for this model where the shapes "
        "differ), so their figures say little about the OOD inputs it will meet; give your own sets with "
        "--ood near:PATH / --ood far:PATH."
    )
    headers = ["OOD set", "made for", "made at", "used at"]
    return [Table("Constructed OOD sets used on data they were not made for", headers, body, note)]


def ranking_table(rows: Sequence[StoredRow], title: str) -> list[Table]:
    """Detectors ranked by mean AUROC over the OOD sets, with per-set AUROC and FPR@95 in both conventions."""
    per: dict[str, dict[str, dict[str, StoredRow]]] = {}
    for r in rows:
        det = r.params.get("detector")
        if det is None or ood_set(r) is None:
            continue
        for m in OOD_METRICS:
            if r.metric == detector_metric(det, m):
                per.setdefault(det, {}).setdefault(r.hazard, {})[m] = r
    if not per:
        return []
    hazards = sorted({h for d in per.values() for h in d})
    ranked = sorted(
        per.items(), key=lambda kv: -sum(v["auroc"].value for v in kv[1].values() if "auroc" in v) / max(len(kv[1]), 1)
    )
    body = []
    for rank, (det, by_h) in enumerate(ranked, 1):
        aurocs = [by_h[h]["auroc"].value for h in hazards if h in by_h and "auroc" in by_h[h]]
        cells = [str(rank), det, fmt_value(sum(aurocs) / len(aurocs)) if aurocs else ""]
        for h in hazards:
            v = by_h.get(h, {})
            shown = [v[m] for m in ("auroc", "fpr95_id_positive", "fpr95_ood_positive") if m in v]
            cells.append(" / ".join(fmt_value(r.value) for r in shown) if len(shown) == 3 else "")
        first = next(iter(by_h[next(iter(by_h))].values()))
        hyper = {k: v for k, v in first.params.items() if k not in _NOT_HYPER}
        text = ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "none"
        tuned = first.params.get("tuned_on")
        cells.append(f"{text} (tuned on {tuned} outliers)" if tuned else f"{text} (paper defaults)")
        body.append(cells)
    headers = [
        "rank",
        "detector",
        "mean AUROC",
        *[f"{Hazard.parse(h).name} AUROC / FPR@95 ID+ / FPR@95 OOD+" for h in hazards],
        "hyper-parameters",
    ]
    return [Table(title, headers, body, FPR_TABLE_NOTE)]


# -- plots (drawn during the run, from the scores) ------------------------------------------------
def histograms_png(panels: Mapping[str, tuple[torch.Tensor, Mapping[str, torch.Tensor]]]) -> bytes:
    """One histogram panel per title: (in-distribution scores, OOD scores by set)."""
    fig = figure(4.6 * len(panels), 3.2)
    for i, (title, (in_scores, outs)) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        allv = torch.cat([in_scores, *outs.values()]).double()
        lo, hi = float(allv.quantile(0.005)), float(allv.quantile(0.995))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = torch.linspace(lo, hi, 41).tolist()
        ax.hist(in_scores.clamp(lo, hi).numpy(), bins=bins, density=True, alpha=0.55, label="in-distribution (test)")
        for name, s in outs.items():
            ax.hist(s.clamp(lo, hi).numpy(), bins=bins, density=True, histtype="step", linewidth=1.6, label=name)
        ax.set_xlabel("anomaly score (higher = more anomalous)")
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return to_png(fig)


def roc_png(panels: Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]) -> bytes:
    """One ROC panel per title, each with labelled (fpr, tpr) curves."""
    fig = figure(3.6 * len(panels), 3.5)
    for i, (title, curves) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        for label, (fpr, tpr) in curves.items():
            ax.plot(fpr.numpy(), tpr.numpy(), linewidth=1.4, label=label)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("FPR (in-distribution flagged)")
        if i == 1:
            ax.set_ylabel("TPR (OOD flagged)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)
