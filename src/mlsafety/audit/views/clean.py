"""How the ``clean`` check reads in the report: the accuracy headline, the per-class table and the
confusion matrix (drawn during the run, by :func:`confusion_png`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png

CAPTION = "Confusion matrix on the test data (rows: true class)."


class CleanView(View):
    """Headline: clean accuracy; table: accuracy over all classes and per class."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("Clean accuracy", r) for r in rows if r.metric == "accuracy"]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        body = [[_label(r), fmt_value(r.value), fmt_ci(r), str(r.n)] for r in rows]
        return [Table("Accuracy", ["", "accuracy", "95% CI", "n"], body)]


def _label(r: StoredRow) -> str:
    return "all classes" if r.metric == "accuracy" else f"class {r.params.get('label', '')}"


def confusion_png(confusion: torch.Tensor) -> bytes:
    """A confusion matrix (K, K) (rows: true class), with counts written in when K <= 20."""
    fig = figure(4.2, 3.6)
    ax = fig.add_subplot()
    im = ax.imshow(confusion.numpy(), cmap="Blues")
    k = confusion.shape[0]
    if k <= 20:
        for i in range(k):
            for j in range(k):
                v = int(confusion[i, j])
                if v:
                    colour = "white" if v > confusion.max() / 2 else "black"
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return to_png(fig)
