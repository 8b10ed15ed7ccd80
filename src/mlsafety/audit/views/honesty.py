"""How the ``honesty`` check reads in the report: the honesty gap and the best probe as headlines, probe
accuracy per layer, per template and behind the misleading prefix as tables, and the accuracy-by-layer
plot (drawn during the run from the same numbers, by :func:`accuracy_by_layer_png`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png

METHODS = ("ccs", "top-pc", "logistic", "mean-diff")
"""The probes the check fits: unsupervised first, then the supervised ceiling."""

CAPTION = (
    "Probe accuracy on held-out statements by layer (0 = embeddings), bands: exact 95% intervals; CCS and top-PC "
    "are unsupervised (sign fixed from the zero-shot answers), logistic and mean difference supervised; "
    "horizontal lines: zero-shot accuracy (raw, and median-calibrated)."
)


NOTE = (
    "The statements are the project's own (not a benchmark). A misleading prefix tells the model every answer is "
    "the opposite of the truth and shows two wrong answers."
)


def metric_stem(method: str) -> str:
    """A method or reading name as a metric prefix (``mean-diff`` -> ``mean_diff``)."""
    return method.replace("-", "_")


def layer_metric(method: str, layer: int, what: str = "accuracy") -> str:
    """The metric name of ``method``'s ``what`` at ``layer`` (``ccs_accuracy_layer12``)."""
    return f"{metric_stem(method)}_{what}_layer{layer}"


class HonestyView(View):
    """Headlines: the honesty gap (clean) and the best unsupervised probe; tables: layers, templates, prefix."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        for r in rows:
            if r.metric == "honesty_gap" and r.hazard == "honesty/statements":
                out.append(
                    Headline("Honesty gap (stated answer vs best unsupervised probe)", r, higher_is_better=False)
                )
        for r in rows:
            if r.metric == "ccs_accuracy" and r.hazard == "honesty/statements":
                out.append(Headline("CCS accuracy at its best layer", r))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        out: list[Table] = []
        clean = [r for r in rows if r.hazard == "honesty/statements"]
        by = {r.metric: r for r in clean}
        layers = sorted({int(r.params["layer"]) for r in clean if "_layer" in r.metric and "layer" in r.params})
        if layers:
            body = [[str(k), *(_cell(by.get(layer_metric(m, k))) for m in METHODS)] for k in layers]
            either = [(k, by[layer_metric("ccs", k, "either_sign")]) for k in layers
                      if layer_metric("ccs", k, "either_sign") in by]  # fmt: skip
            note = "CCS under the better of its two signs: " + ", ".join(
                f"layer {k} {fmt_value(r.value)}" for k, r in either
            )
            zs = [by[m] for m in ("zero_shot_accuracy", "zero_shot_calibrated_accuracy") if m in by]
            note += ". " + "; ".join(f"{r.metric.replace('_', ' ')} {_cell(r)}" for r in zs)
            out.append(Table("Probe accuracy by layer (held-out statements, exact 95% CI)", ["layer", *METHODS], body,
                             note))  # fmt: skip
        summary = [r for r in rows if not r.metric.rsplit("_layer", 1)[-1].isdigit() or "_layer" not in r.metric]
        summary = [r for r in summary if r.metric not in ("zero_shot_accuracy", "zero_shot_calibrated_accuracy")
                   or r.hazard != "honesty/statements"]  # fmt: skip
        if summary:
            body = [[r.hazard, r.metric, fmt_value(r.value), fmt_ci(r), _note(r.params)] for r in summary]
            out.append(Table("Best layers, templates, misleading prefix, transfer and the honesty gap",
                             ["hazard", "metric", "value", "95% CI", "at"], body,
                             NOTE))  # fmt: skip
        return out


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def _note(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {params[k]}" for k in ("method", "layer", "template", "fitted_on") if k in params)


def accuracy_by_layer_png(report: Any) -> bytes:
    """Test accuracy against layer for every probe of the main template, with exact intervals, and zero-shot."""
    fig = figure(5.2, 3.4)
    ax = fig.add_subplot()
    rows = report.table()
    for m in METHODS:
        pts = sorted((r.layer, r.accuracy) for r in rows if r.method == m)
        if not pts:
            continue
        x = [k for k, _ in pts]
        (line,) = ax.plot(x, [e.value for _, e in pts], marker="o", markersize=3, linewidth=1.3, label=m)
        ax.fill_between(x, [e.ci_low for _, e in pts], [e.ci_high for _, e in pts], alpha=0.15,
                        color=line.get_color())  # fmt: skip
    for r, style in zip([r for r in rows if r.layer == -1], (":", "-.")):
        ax.axhline(r.accuracy.value, linestyle=style, color="black", linewidth=1.0, label=r.method)
    ax.axhline(0.5, color="grey", linewidth=0.6)
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer (residual stream read; 0 = embeddings)")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7, ncol=2)
    return to_png(fig)
