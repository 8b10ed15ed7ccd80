"""How the ``calibration`` check reads in the report: the ECE headlines, the before/after table and
the fitted temperature, and the reliability diagrams (drawn during the run, by :func:`reliability_png`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.monitoring import calibration as cal

SUFFIX = {name: f"_after_{cal.CALIBRATORS.get(name).abbrev}" for name in cal.available()}
"""The metric-name suffix of each calibrator (``temperature``: ``_after_ts``)."""


class CalibrationView(View):
    """Headlines: ECE before and after temperature scaling; tables: every metric before and after
    each calibrator, and the fitted temperature."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline(f"ECE{' after TS' if r.metric.endswith('_ts') else ''}", r, higher_is_better=False)
                for r in rows if r.metric in ("ece", "ece_after_ts")]  # fmt: skip

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        by = {r.metric: r for r in rows}
        cols = [c for c in SUFFIX if any(m + SUFFIX[c] in by for m in cal.METRICS)]
        body = []
        for m in cal.METRICS:
            if m not in by:
                continue
            cells = [m.replace("_", " "), cell(by[m])]
            cells += [cell(by.get(m + SUFFIX[c])) for c in cols]
            body.append(cells)
        headers = ["metric (lower is better)", "before", *[f"after {c} scaling" for c in cols]]
        tables = [Table("Calibration before and after recalibration [95% CI]", headers, body)]
        if "temperature" in by:
            t = by["temperature"]
            tables.append(Table("Fitted temperature (validation data) [95% CI]", ["T"], [[cell(t)]]))
        return tables


def cell(r: StoredRow | None) -> str:
    """A table cell: the value and its interval (empty when the row is missing)."""
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def reliability_png(panels: Sequence[tuple[str, cal.CalibrationStats]]) -> bytes:
    """Reliability diagrams side by side: (title, stats) per panel, with a count histogram."""
    fig = figure(3.4 * len(panels), 3.4)
    for i, (title, stats) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        rel = stats.reliability()
        centres = ((rel.edges[:-1] + rel.edges[1:]) / 2).numpy()
        width = float(rel.edges[1] - rel.edges[0])
        filled = rel.count > 0
        acc = torch.nan_to_num(rel.accuracy).numpy()
        ax.bar(centres[filled.numpy()], acc[filled.numpy()], width=width * 0.95, color="#4c72b0", label="accuracy")
        gap_base = torch.minimum(torch.nan_to_num(rel.accuracy), torch.nan_to_num(rel.confidence))
        gap = (torch.nan_to_num(rel.accuracy) - torch.nan_to_num(rel.confidence)).abs()
        ax.bar(centres[filled.numpy()], gap[filled].numpy(), bottom=gap_base[filled].numpy(), width=width * 0.95,
               color="#dd8452", alpha=0.6, label="gap")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max softmax)")
        if i == 1:
            ax.set_ylabel("accuracy")
        ax.set_title(f"{title}  (ECE {stats.value('ece'):.3f})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return to_png(fig)
