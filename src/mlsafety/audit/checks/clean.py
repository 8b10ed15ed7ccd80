"""Check ``clean``: accuracy on the in-distribution test data, per class, and the confusion matrix.

The rendering lives in :mod:`mlsafety.audit.views.clean`.
"""

from __future__ import annotations

import torch

from mlsafety.audit._check import Artifact, Check, Row, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import metric_name, truncation_rows
from mlsafety.audit.views.clean import CAPTION, CleanView, confusion_png
from mlsafety.core import Hazard
from mlsafety.metrics import accuracy

CLEAN = Hazard.clean()
"""The test data as given: the hazard every row of this check is stored under."""


@register_check("clean")
class Clean(Check):
    pillar = "performance"
    modalities = ("image", "text")
    title = "Clean accuracy"
    description = (
        "Top-1 accuracy on the in-distribution test data with its exact (Clopper-Pearson) 95% interval, "
        "accuracy per class and the confusion matrix. For text, how many test texts were truncated at the model's "
        "maximum length (a warning when any was)."
    )
    metrics = ("accuracy", "class_*_accuracy", "truncated_inputs")
    view = CleanView

    def run(self, ctx: AuditContext) -> TaskResult:
        y = ctx.labels(CLEAN)
        pred = ctx.outputs(CLEAN).logits.argmax(dim=1)
        rows = [Row.of(str(CLEAN), "accuracy", accuracy(pred, y))]
        k = ctx.model.num_classes
        for c in range(k):
            mask = y == c
            if mask.any():
                est = accuracy(pred[mask], y[mask])
                rows.append(Row.of(str(CLEAN), metric_name("class", c, "accuracy"), est, label=c))
        confusion = torch.zeros(k, k, dtype=torch.long, device=y.device)
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        rows += truncation_rows(ctx, CLEAN)
        return TaskResult(rows, [Artifact("confusion-matrix", confusion_png(confusion.cpu()), caption=CAPTION)])
