"""Check ``calibration``: every calibration metric before and after temperature scaling.

The computing is :func:`mlsafety.monitoring.calibration.evaluate_calibration`; the rendering lives in
:mod:`mlsafety.audit.views.calibration`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int
from mlsafety.audit.views.calibration import SUFFIX, CalibrationView, reliability_png
from mlsafety.core import Hazard, InputError
from mlsafety.monitoring import calibration as cal

CLEAN = Hazard.clean()
"""The test data as given: the hazard every row of this check is stored under."""
METRICS = list(cal.METRICS)


@register_check("calibration")
class Calibration(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "Calibration"
    description = (
        "ECE (equal-width and equal-mass bins), MCE, RMS calibration error, classwise ECE, Brier score and NLL on the "
        "test data, before and after recalibration fitted on the validation data only (temperature scaling: "
        "`_after_ts`; vector scaling when enabled: `_after_vs`), each with a seeded bootstrap 95% interval; the "
        "fitted temperature with a bootstrap 95% interval from refits on resampled validation data."
    )
    defaults: ClassVar[dict[str, Any]] = {"n_bins": 15, "n_boot": 500, "calibrators": ["temperature"]}
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    metrics = (*METRICS, *(m + suffix for suffix in SUFFIX.values() for m in METRICS), "temperature")
    view = CalibrationView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params  # checked when the audit is planned, before its run is stored
        require_int(self.name, p, "n_bins", 1)
        require_int(self.name, p, "n_boot", 1)
        if isinstance(p["calibrators"], str) or not isinstance(p["calibrators"], list):
            raise InputError(
                f"calibration: calibrators must be a list of names, e.g. ['temperature'], got {p['calibrators']!r}"
            )
        for name in p["calibrators"]:
            cal.CALIBRATORS.get(name)  # an unknown name fails with a suggestion
        return super().tasks(ctx)

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        res = cal.evaluate_calibration(
            ctx.outputs(CLEAN).logits, ctx.labels(CLEAN), ctx.outputs_for(ctx.data.val).logits, ctx.data.val.y,
            calibrators=p["calibrators"], metrics=METRICS, n_bins=p["n_bins"], n_boot=p["n_boot"], seed=ctx.seed,
            stream=(self.name, str(CLEAN)),
        )  # fmt: skip
        rows = [Row.of(str(CLEAN), m, est, **res.params(m), calibration="none") for m, est in res.before.items()]
        for name, after in res.after.items():
            rows += [Row.of(str(CLEAN), m + after.tag, est, **res.params(m), calibration=name)
                     for m, est in after.metrics.items()]  # fmt: skip
        if res.temperature is not None:  # a temperature scaler was among the calibrators
            rows.append(Row.of(str(CLEAN), "temperature", res.temperature, fit="val"))
        panels = [("before", res.stats), *((f"after {name} scaling", a.stats) for name, a in res.after.items())]
        caption = "Reliability diagrams on the test data before and after recalibration (fitted on validation data)."
        return TaskResult(rows, [Artifact("reliability", reliability_png(panels), caption=caption)])
