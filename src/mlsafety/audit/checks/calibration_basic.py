"""Check ``calibration-basic``: are the model's confidences honest on the test data?

Also holds the helpers the ``calibration`` check shares (intervals, reliability diagrams).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._check import Artifact, Check, Headline, Row, StoredRow, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit._plots import figure, to_png
from mlsafety.core import derive_seed
from mlsafety.metrics import Estimate, bootstrap_weighted
from mlsafety.monitoring import calibration as cal

BINNED = ("ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece")
"""Metrics that depend on the number of bins (stored with ``n_bins`` in their params)."""


def estimate(metric: str, stats: cal.CalibrationStats, n_boot: int, seed: int) -> Estimate:
    """A calibration metric with a seeded percentile-bootstrap 95% interval over inputs.

    Each resample is a row of multinomial counts over the inputs and the metric is computed from
    the per-input terms of ``stats`` with those weights (:meth:`CalibrationStats.weighted`), so
    memory is O(N + chunk x N) for any number of classes and resamples; the resamples are those of
    :func:`mlsafety.metrics.bootstrap_statistic` with the same seed and name.
    """
    return bootstrap_weighted(
        lambda w: stats.weighted(metric, w), stats.n, n_boot, seed, name=metric, value=stats.value(metric)
    )


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


def metric_rows(
    ctx: AuditContext, check: str, hazard: str, metrics: Sequence[str], stats: cal.CalibrationStats, n_boot: int,
    suffix: str = "", **params: Any,
) -> list[Row]:  # fmt: skip
    rows = []
    for m in metrics:
        seed = derive_seed(ctx.seed, check, hazard, m, suffix)
        est = estimate(m, stats, n_boot, seed)
        extra = {"n_bins": stats.n_bins} if m in BINNED else {}
        rows.append(Row.of(hazard, f"{m}{suffix}", est, **extra, **params))
    return rows


@register_check("calibration-basic")
class CalibrationBasic(Check):
    pillar = "monitoring"
    title = "Calibration (baseline)"
    description = (
        "Expected calibration error (equal-width bins of the max softmax probability), Brier score and negative "
        "log-likelihood on the test data, each with a seeded bootstrap 95% interval, and the reliability diagram."
    )
    defaults: ClassVar[dict[str, Any]] = {"n_bins": 15, "n_boot": 500}
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    metrics = ("ece", "brier", "nll")

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        stats = cal.CalibrationStats.from_logits(ctx.outputs("clean").logits, ctx.labels("clean"), p["n_bins"])
        rows = metric_rows(ctx, self.name, "clean", ["ece", "brier", "nll"], stats, p["n_boot"])
        png = reliability_png([("test data", stats)])
        return TaskResult(rows, [Artifact("reliability", png, caption="Reliability diagram on the test data.")])

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("ECE", r, higher_is_better=False) for r in rows if r.metric == "ece"]
