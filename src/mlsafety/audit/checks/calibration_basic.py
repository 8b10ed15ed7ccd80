"""Check ``calibration-basic``: are the model's confidences honest on the test data?

The computing lives in the pillar (:func:`mlsafety.monitoring.calibration.evaluate_calibration`)
and the rendering in :mod:`mlsafety.audit.views.calibration_basic`; :func:`metric_rows` turns the
pillar's estimates into rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int
from mlsafety.audit.views.calibration import reliability_png
from mlsafety.audit.views.calibration_basic import CalibrationBasicView
from mlsafety.core import Hazard, derive_seed
from mlsafety.monitoring import calibration as cal

CLEAN = Hazard.clean()
"""The test data as given: the hazard every row of this check is stored under."""

__all__ = ["CalibrationBasic", "metric_rows"]


def metric_rows(
    ctx: AuditContext, check: str, hazard: str, metrics: Sequence[str], stats: cal.CalibrationStats, n_boot: int,
    suffix: str = "", **params: Any,
) -> list[Row]:  # fmt: skip
    """Rows of ``metrics`` of ``stats``, intervals seeded by (check, hazard, metric, suffix); kept for
    callers of the first version (the checks use ``calibration.evaluate_calibration``)."""
    rows = []
    for m in metrics:
        est = cal.metric_estimate(m, stats, n_boot, derive_seed(ctx.seed, check, hazard, m, suffix))
        extra = {"n_bins": stats.n_bins} if m in cal.BINNED_METRICS else {}
        rows.append(Row.of(hazard, f"{m}{suffix}", est, **extra, **params))
    return rows


@register_check("calibration-basic")
class CalibrationBasic(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "Calibration (baseline)"
    description = (
        "Expected calibration error (equal-width bins of the max softmax probability), Brier score and negative "
        "log-likelihood on the test data, each with a seeded bootstrap 95% interval, and the reliability diagram."
    )
    defaults: ClassVar[dict[str, Any]] = {"n_bins": 15, "n_boot": 500}
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    metrics = ("ece", "brier", "nll")
    view = CalibrationBasicView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params  # checked when the audit is planned, before its run is stored
        require_int(self.name, p, "n_bins", 1)
        require_int(self.name, p, "n_boot", 1)
        return super().tasks(ctx)

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        res = cal.evaluate_calibration(
            ctx.outputs(CLEAN).logits, ctx.labels(CLEAN), calibrators=(), metrics=self.metrics,
            n_bins=p["n_bins"], n_boot=p["n_boot"], seed=ctx.seed, stream=(self.name, str(CLEAN)),
        )  # fmt: skip
        rows = [Row.of(str(CLEAN), m, est, **res.params(m)) for m, est in res.before.items()]
        png = reliability_png([("test data", res.stats)])
        return TaskResult(rows, [Artifact("reliability", png, caption="Reliability diagram on the test data.")])
