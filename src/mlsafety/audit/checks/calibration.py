"""Check ``calibration``: every calibration metric before and after temperature scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

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
from mlsafety.audit.checks.calibration_basic import metric_rows, reliability_png
from mlsafety.core import derive_seed
from mlsafety.monitoring import calibration as cal

METRICS = ["ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece", "brier", "nll"]
SUFFIX = {"temperature": "_after_ts", "vector": "_after_vs"}


@register_check("calibration")
class Calibration(Check):
    pillar = "monitoring"
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

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        logits = ctx.outputs("clean").logits
        labels = ctx.labels("clean")
        val = ctx.outputs_for(ctx.data.val).logits
        before = cal.CalibrationStats.from_logits(logits, labels, p["n_bins"])
        rows = metric_rows(ctx, self.name, "clean", METRICS, before, p["n_boot"], calibration="none")
        panels = [("before", before)]
        for name in p["calibrators"]:
            scaler = cal.create(name).fit(val, ctx.data.val.y)
            after = cal.CalibrationStats.from_logits(logits, labels, p["n_bins"], transform=scaler.transform)
            rows += metric_rows(ctx, self.name, "clean", METRICS, after, p["n_boot"], suffix=SUFFIX[name],
                                calibration=name)  # fmt: skip
            if isinstance(scaler, cal.TemperatureScaler):
                seed = derive_seed(ctx.seed, self.name, "clean", "temperature")
                est = cal.temperature_estimate(val, ctx.data.val.y, scaler.temperature_, p["n_boot"], seed)
                rows.append(Row.of("clean", "temperature", est, fit="val"))
            panels.append((f"after {name} scaling", after))
        png = reliability_png(panels)
        caption = "Reliability diagrams on the test data before and after recalibration (fitted on validation data)."
        return TaskResult(rows, [Artifact("reliability", png, caption=caption)])

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline(f"ECE{' after TS' if r.metric.endswith('_ts') else ''}", r, higher_is_better=False)
                for r in rows if r.metric in ("ece", "ece_after_ts")]  # fmt: skip

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        by = {r.metric: r for r in rows}
        cols = [c for c in ("temperature", "vector") if any(m + SUFFIX[c] in by for m in METRICS)]
        body = []
        for m in METRICS:
            if m not in by:
                continue
            cells = [m.replace("_", " "), _cell(by[m])]
            cells += [_cell(by.get(m + SUFFIX[c])) for c in cols]
            body.append(cells)
        headers = ["metric (lower is better)", "before", *[f"after {c} scaling" for c in cols]]
        tables = [Table("Calibration before and after recalibration [95% CI]", headers, body)]
        if "temperature" in by:
            t = by["temperature"]
            tables.append(Table("Fitted temperature (validation data) [95% CI]", ["T"], [[_cell(t)]]))
        return tables


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"
