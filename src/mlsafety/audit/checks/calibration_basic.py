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
from mlsafety.metrics import Estimate, bootstrap_mean, bootstrap_statistic
from mlsafety.monitoring import calibration as cal

BINNED: dict[str, tuple[str, str]] = {
    "ece": ("l1", "width"),
    "adaptive_ece": ("l1", "mass"),
    "mce": ("max", "width"),
    "rms_calibration_error": ("l2", "width"),
}
"""Binned metrics as (norm, binning) of :func:`mlsafety.monitoring.calibration.calibration_error`."""


def estimate(metric: str, probs: torch.Tensor, labels: torch.Tensor, n_bins: int, n_boot: int, seed: int) -> Estimate:
    """A calibration metric of ``probs`` (N, K) with a seeded bootstrap 95% interval over inputs."""
    probs, labels = probs.double().cpu(), labels.cpu()
    if metric == "brier":
        return bootstrap_mean(cal.brier_per_sample(probs, labels), n_boot, seed, name=metric)
    if metric == "nll":
        return bootstrap_mean(cal.nll_per_sample(probs, labels), n_boot, seed, name=metric)
    conf, correct = cal.confidence_and_correct(probs, labels)
    if metric in BINNED:
        norm, binning = BINNED[metric]

        def stat(v: torch.Tensor) -> torch.Tensor:
            return cal.calibration_error(v[..., 0], v[..., 1], n_bins, norm, binning)

        return bootstrap_statistic(stat, torch.stack([conf, correct], dim=1), n_boot, seed, name=metric)
    if metric == "classwise_ece":
        k = probs.shape[1]
        onehot = torch.nn.functional.one_hot(labels, k).double()

        def stat_cw(v: torch.Tensor) -> torch.Tensor:  # v: (B, N, 2K)
            p, o = v[..., :k].transpose(1, 2), v[..., k:].transpose(1, 2)  # (B, K, N)
            b = p.shape[0]
            err = cal.calibration_error(p.reshape(b * k, -1), o.reshape(b * k, -1), n_bins, "l1", "width")
            return err.reshape(b, k).mean(dim=1)

        return bootstrap_statistic(stat_cw, torch.cat([probs, onehot], dim=1), n_boot, seed, name=metric)
    raise ValueError(f"unknown calibration metric {metric!r}")


def reliability_png(panels: Sequence[tuple[str, torch.Tensor, torch.Tensor]], n_bins: int) -> bytes:
    """Reliability diagrams side by side: (title, probs, labels) per panel, with a count histogram."""
    fig = figure(3.4 * len(panels), 3.4)
    for i, (title, probs, labels) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        rel = cal.reliability(probs.cpu(), labels.cpu(), n_bins)
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
        ece = cal.ece(probs.cpu(), labels.cpu(), n_bins)
        ax.set_title(f"{title}  (ECE {ece:.3f})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return to_png(fig)


def metric_rows(
    ctx: AuditContext, check: str, hazard: str, metrics: Sequence[str], probs: torch.Tensor, labels: torch.Tensor,
    n_bins: int, n_boot: int, suffix: str = "", **params: Any,
) -> list[Row]:  # fmt: skip
    rows = []
    for m in metrics:
        seed = derive_seed(ctx.seed, check, hazard, m, suffix)
        est = estimate(m, probs, labels, n_bins, n_boot, seed)
        extra = {"n_bins": n_bins} if m in BINNED or m == "classwise_ece" else {}
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

    def run(self, ctx: AuditContext) -> TaskResult:
        probs = ctx.outputs("clean").logits.double().softmax(dim=1)
        labels = ctx.labels("clean")
        p = self.params
        rows = metric_rows(ctx, self.name, "clean", ["ece", "brier", "nll"], probs, labels, p["n_bins"], p["n_boot"])
        png = reliability_png([("test data", probs, labels)], p["n_bins"])
        return TaskResult(rows, [Artifact("reliability", png, caption="Reliability diagram on the test data.")])

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("ECE", r, higher_is_better=False) for r in rows if r.metric == "ece"]
