"""How the ``corruptions`` check reads in the report: the mean-accuracy and mCE headlines, the
accuracy table per corruption and severity, and the layout of its heat map (:func:`heat_map_png`,
drawn during the run)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.core import Hazard


def _n(r: StoredRow) -> str:
    return "" if r.n is None else str(r.n)


def _cell(by: dict[int, StoredRow | None], severity: int) -> str:
    if severity not in by:
        return ""
    r = by[severity]
    return "n/a" if r is None else fmt_value(r.value)


def _normalised_by(r: StoredRow) -> str:
    """What divided a normalised row: the baseline errors the user gave (``baseline: given``), else AlexNet's
    published ones (a row stored by an older mlsafety, without ``baseline``, keeps the label it had)."""
    return "normalised by the given baseline" if r.params.get("baseline") == "given" else "AlexNet-normalised"


def _summary_label(r: StoredRow) -> str:
    """The summary's metric; mCE and relative mCE say when, and by what, they are normalised (then they are
    not the mean of the CE column, which is each corruption's plain mean error)."""
    normalised = r.metric in ("mce", "relative_mce") and r.params.get("normalised")
    return r.metric.replace("_", " ") + (f" ({_normalised_by(r)})" if normalised else "")


class CorruptionsView(View):
    """Headlines: mean accuracy under corruptions and mCE; tables: accuracy per corruption and
    severity (with CE), CE with its interval, the summaries, and what was not applicable."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        for r in rows:
            if Hazard.parse(r.hazard) != Hazard.corruption():
                continue
            if r.metric == "mean_accuracy":
                out.append(Headline("Mean accuracy under corruptions", r))
            elif r.metric == "mce":
                label = f"mCE ({_normalised_by(r)})" if r.params.get("normalised") else "mCE (mean error)"
                out.append(Headline(label, r, higher_is_better=False))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        cells: dict[str, dict[int, StoredRow | None]] = {}
        ce: dict[str, StoredRow] = {}
        summary = []
        skipped = []
        for r in rows:
            h = Hazard.parse(r.hazard)
            name, sev = str(h.name), h.severity
            if sev is not None and r.metric == "accuracy":
                cells.setdefault(name, {})[sev] = r
            elif sev is not None and r.metric == "not_applicable":
                cells.setdefault(name, {})[sev] = None
                skipped.append([name, str(sev), str(r.params.get("reason", ""))])
            elif h.name is not None and sev is None and r.metric == "ce":
                ce[name] = r
            elif h == Hazard.corruption() and r.metric != "mce_not_applicable":
                summary.append([_summary_label(r), fmt_value(r.value), fmt_ci(r), _n(r)])
        tables = []
        if cells:
            sevs = sorted({s for by in cells.values() for s in by})
            body = [[name, *[_cell(by, s) for s in sevs], fmt_value(ce[name].value) if name in ce else "n/a"]
                    for name, by in cells.items()]  # fmt: skip
            tables.append(
                Table("Accuracy per corruption and severity", ["corruption", *[f"s{s}" for s in sevs], "CE"], body)
            )
        if ce:
            body = [[name, fmt_value(r.value), fmt_ci(r), _n(r)] for name, r in ce.items()]
            tables.append(Table("Corruption error per corruption", ["corruption", "CE", "95% CI", "n"], body))
        if summary:
            tables.append(Table("Corruption summary", ["metric", "value", "95% CI", "n"], summary))
        if skipped:
            tables.append(
                Table(
                    "Not applicable to these images (not run, not counted in CE or mCE)",
                    ["corruption", "severity", "why"],
                    skipped,
                )
            )
        return tables + late


def heat_map_png(acc: torch.Tensor, names: list[str], sevs: list[int], clean_acc: float) -> bytes:
    """A heat map of accuracy (corruptions x severities) as PNG bytes."""
    fig = figure(1.6 + 0.55 * len(sevs), 0.9 + 0.28 * len(names))
    ax = fig.add_subplot()
    im = ax.imshow(acc.numpy(), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(sevs)), [str(s) for s in sevs])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("severity")
    ax.set_title(f"accuracy (clean {clean_acc:.3f})", fontsize=9)
    for i in range(len(names)):
        for j in range(len(sevs)):
            ax.text(j, i, f"{float(acc[i, j]):.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return to_png(fig)
