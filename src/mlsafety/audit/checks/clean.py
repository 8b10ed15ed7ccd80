"""Check ``clean``: accuracy on the in-distribution test data, per class, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import (
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    TaskResult,
    fmt_ci,
    fmt_value,
    register_check,
)
from mlsafety.audit._context import AuditContext
from mlsafety.audit._plots import figure, to_png
from mlsafety.metrics import accuracy


@register_check("clean")
class Clean(Check):
    pillar = "performance"
    title = "Clean accuracy"
    description = (
        "Top-1 accuracy on the in-distribution test data with its exact (Clopper-Pearson) 95% interval, "
        "accuracy per class and the confusion matrix."
    )
    metrics = ("accuracy", "class_*_accuracy")

    def run(self, ctx: AuditContext) -> TaskResult:
        logits = ctx.outputs("clean").logits
        y = ctx.labels("clean")
        pred = logits.argmax(dim=1)
        rows = [Row.of("clean", "accuracy", accuracy(pred, y))]
        k = ctx.model.num_classes
        for c in range(k):
            mask = y == c
            if mask.any():
                rows.append(Row.of("clean", f"class_{c}_accuracy", accuracy(pred[mask], y[mask]), label=c))
        confusion = torch.zeros(k, k, dtype=torch.long, device=y.device)
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        return TaskResult(
            rows,
            [
                Artifact(
                    "confusion-matrix",
                    _confusion_png(confusion.cpu()),
                    caption="Confusion matrix on the test data (rows: true class).",
                )
            ],
        )

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("Clean accuracy", r) for r in rows if r.metric == "accuracy"]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        body = [
            [
                ("all classes" if r.metric == "accuracy" else r.metric.replace("_accuracy", "").replace("_", " ")),
                fmt_value(r.value),
                fmt_ci(r),
                str(r.n),
            ]
            for r in rows
        ]
        return [Table("Accuracy", ["", "accuracy", "95% CI", "n"], body)]


def _confusion_png(confusion: torch.Tensor) -> bytes:
    fig = figure(4.2, 3.6)
    ax = fig.add_subplot()
    im = ax.imshow(confusion.numpy(), cmap="Blues")
    k = confusion.shape[0]
    if k <= 20:
        for i in range(k):
            for j in range(k):
                v = int(confusion[i, j])
                if v:
                    ax.text(
                        j,
                        i,
                        str(v),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > confusion.max() / 2 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return to_png(fig)
