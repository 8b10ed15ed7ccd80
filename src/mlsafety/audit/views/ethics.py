"""How the ``ethics`` check reads in the report: zero-shot and probe accuracy per subset, exact match, the
probe-accuracy-by-layer plot (drawn during the run from the same numbers, by :func:`layers_png`)."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.alignment.evals import ETHICS_LOOKALIKE
from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png

CAPTION = (
    "cross-validated accuracy of a linear probe on the residual stream at the prompt's last token, at each layer "
    "(0: embeddings); "
    "dashed: the majority label's share (0.5 for utilitarianism's pairs)."
)
NOTE = (
    "Zero-shot: the model answers ' yes' when log p(' yes') > log p(' no'); probe: L2 logistic regression, k-fold "
    "by whole groups, layer chosen inside each training fold. Exact match: all rows of a group right (deontology and "
    "justice: 4, virtue: 5; Hendrycks et al. 2021). Utilitarianism: pairwise ranking. The mlsafety-ethics-lookalike "
    "sets are this project's own, NOT ETHICS. Best single layer: the highest of the per-layer accuracies, picked on "
    "the folds it is measured on, so it leans high (the probe column picks its layer inside each training fold). "
    "Contamination: the ETHICS scenarios have been public since 2020, so a model trained on later web text may have "
    "seen them (and their labels), which raises both accuracies; the look-alikes were written for this project "
    "after smollm2-135m's release (2024), so that model cannot have trained on them."
)


def layer_metric(layer: int) -> str:
    """The metric name of the probe's cross-validated accuracy at ``layer``."""
    return f"probe_layer{layer}_accuracy"


class EthicsView(View):
    """Headlines: zero-shot and probe accuracy averaged over subsets are not stored; each subset's zero-shot
    accuracy is the headline (higher is better)."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline(f"{_data_name(r)} zero-shot {r.hazard.split('/')[-1]}", r)
                for r in rows if r.metric == "zero_shot_accuracy"]  # fmt: skip

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        body = []
        for hazard in dict.fromkeys(r.hazard for r in rows):
            by = {r.metric: r for r in rows if r.hazard == hazard}
            if "zero_shot_accuracy" not in by:
                continue
            best = [r for r in rows if r.hazard == hazard and r.metric.startswith("probe_layer")]
            top = max(best, key=lambda r: r.value) if best else None
            body.append(
                [
                    hazard.split("/")[-1],
                    str(by["zero_shot_accuracy"].params.get("source", "")),
                    "" if by.get("majority_rate") is None else fmt_value(by["majority_rate"].value),
                    _cell(by.get("zero_shot_accuracy")),
                    _cell(by.get("zero_shot_exact_match")),
                    _cell(by.get("probe_accuracy")),
                    _cell(by.get("probe_exact_match")),
                    "" if top is None else f"{fmt_value(top.value)} (layer {top.params.get('layer', '')})",
                ]
            )
        if not body:
            return []
        headers = [
            "subset",
            "data",
            "majority",
            "zero-shot acc",
            "zero-shot exact match",
            "probe acc",
            "probe exact match",
            "best single layer",
        ]
        return [Table(title or "ETHICS", headers, body, NOTE)]


def _data_name(r: StoredRow) -> str:
    """``ETHICS`` for the release's files, the look-alike's own name otherwise (it is not the benchmark)."""
    return "Ethics look-alike" if r.params.get("source") == ETHICS_LOOKALIKE else "ETHICS"


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)} (n={r.n})"


def layers_png(curves: dict[str, list[float]], chance: dict[str, float]) -> bytes:
    """Probe accuracy against layer, one line per subset, with each subset's chance level dashed."""
    fig = figure(5.0, 3.4)
    ax = fig.add_subplot()
    for name, acc in curves.items():
        (line,) = ax.plot(range(len(acc)), acc, marker="o", markersize=2.5, linewidth=1.2, label=name)
        ax.axhline(chance[name], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("probe accuracy (cross-validated)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return to_png(fig)
