"""Check ``selective``: if the model may abstain, how much can it answer, and how often is it wrong?

The computing is :func:`mlsafety.monitoring.selective.evaluate_selective`, one confidence source
(minus a detector's anomaly score) at a time; the rendering lives in :mod:`mlsafety.audit.views.selective`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import ScoreCache, require_int, require_names, require_number
from mlsafety.audit.views.selective import CAPTION, SelectiveView, curves_png, source_metric
from mlsafety.core import Hazard, InputError
from mlsafety.monitoring import ood
from mlsafety.monitoring import selective as sel

CLEAN = Hazard.clean()
"""The test data as given: the hazard every row of this check is stored under."""
METRICS = sel.METRICS


@register_check("selective")
class Selective(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "Selective prediction"
    description = (
        "Risk-coverage analysis on the test data: the model answers when its confidence (minus a detector's anomaly "
        "score) reaches a threshold. AURC, excess AURC, AUGRC (areas, tie-aware, lower is better), the selective "
        "risk at the target coverage and the largest coverage at the target risk, with seeded bootstrap 95% "
        "intervals (resamples as weights over one sorted order). Plain metric names use the default confidence (MSP)."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "detectors": ["msp", "max-logit", "energy", "entropy"],
        "default": "msp",
        "coverage": 0.9,
        "risk": 0.02,
        "n_boot": 500,
    }
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    metrics = (*METRICS, *(f"*_{m}" for m in METRICS))  # plain for the default, then per confidence source
    higher_is_better: ClassVar[frozenset[str]] = frozenset(
        {"coverage_at_risk", *(source_metric(d, "coverage_at_risk") for d in ood.available())}
    )
    lower_is_better: ClassVar[frozenset[str]] = frozenset(
        m
        for base in METRICS
        if base != "coverage_at_risk"
        for m in (base, *(source_metric(d, base) for d in ood.available()))
    )
    view = SelectiveView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params  # checked when the audit is planned, before its run is stored
        names = self._names()
        ScoreCache(ctx, names)  # unknown names, or ones that cannot run on this model, fail here
        if p["default"] not in names:
            raise InputError(f"selective: default {p['default']!r} is not among its detectors {names}; add it there")
        require_number("selective", p, "coverage", 0.0, 1.0, open_low=True)
        require_number("selective", p, "risk", 0.0, 1.0)
        require_int("selective", p, "n_boot", 1)
        return super().tasks(ctx)

    def _names(self) -> list[str]:
        """The detectors to run: a list of names, or one name alone (a list of one)."""
        return require_names(self.name, self.params, "detectors", "['msp', 'energy']")

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        cache = ScoreCache(ctx, self._names())
        scores = cache.scores(str(CLEAN))
        correct = (ctx.outputs(CLEAN).pred == ctx.labels(CLEAN)).double().cpu()
        rows: list[Row] = []
        curves = {}
        for name in cache.names:
            res = sel.evaluate_selective(-scores[name].double(), correct, p["coverage"], p["risk"], p["n_boot"],
                                         seed=ctx.seed, stream=(self.name, name))  # fmt: skip
            curves[name] = res.curve
            for m, est in res.metrics.items():
                rows.append(Row.of(str(CLEAN), source_metric(name, m), est, detector=name, **res.params(m)))
                if name == p["default"]:
                    rows.append(Row.of(str(CLEAN), m, est, detector=name, **res.params(m)))
        return TaskResult(rows, [Artifact("risk-coverage", curves_png(curves), caption=CAPTION)])
