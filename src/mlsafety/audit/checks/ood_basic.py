"""Check ``ood-basic``: can MSP and Energy tell every OOD set of the audit from the test data?

The work is the library's (:class:`mlsafety.monitoring.ood.ScoreCache`: detectors fitted once, scores
from the audit's shared forward passes; :func:`mlsafety.metrics.ood_metrics`: the metrics with
intervals); this module turns them into rows. The report view is
:class:`~mlsafety.audit.views.ood_basic.OODBasicView`. :func:`detector_rows` serves the ``ood`` check
too; the audit-bound score cache is :class:`mlsafety.audit.checks._common.ScoreCache`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import ScoreCache, bind, truncation_rows
from mlsafety.audit.views.ood_basic import FPR_NOTE, OODBasicView, detector_metric, histograms_png
from mlsafety.core import Hazard, derive_seed
from mlsafety.metrics import OOD_METRICS, ood_metrics


def detector_rows(
    hazard: str,
    detector: str,
    in_scores: torch.Tensor,
    out_scores: torch.Tensor,
    n_boot: int,
    seed: int,
    /,
    plain: bool = False,
    **params: Any,
) -> list[Row]:
    """The OOD metrics (:data:`~mlsafety.metrics.OOD_METRICS`) with bootstrap intervals, named per
    detector (:func:`~mlsafety.audit.views.ood_basic.detector_metric`) and plainly for the default.

    Intervals come from :func:`~mlsafety.metrics.ood_metrics` (a fused, seeded bootstrap). The
    leading arguments are positional-only so a detector's own hyper-parameters (which may include
    ``seed``) can pass through ``params`` into the rows.
    """
    est = ood_metrics(in_scores, out_scores, n_boot=n_boot, seed=seed)
    rows = [Row.of(hazard, detector_metric(detector, m), e, detector=detector, **params) for m, e in est.items()]
    if plain:
        rows += [Row.of(hazard, m, e, detector=detector, **params) for m, e in est.items()]
    return rows


def ood_hazards(ctx: AuditContext) -> list[str]:
    """The audit's OOD sets as hazards (``ood/<set>``), in the data's order."""
    return [str(Hazard.ood(n)) for n in ctx.data.ood]


@register_check("ood-basic")
class OODBasic(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "OOD detection (baseline)"
    description = (
        "Maximum softmax probability and Energy, fitted on nothing, scored on the test data against every OOD set: "
        "AUROC, AUPR-In, AUPR-Out and FPR@95 (both conventions) with seeded bootstrap 95% intervals. " + FPR_NOTE
    )
    defaults: ClassVar[dict[str, Any]] = {"detectors": ["msp", "energy"], "default": "msp", "n_boot": 500}
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    # plain for the default, then per detector, then the warning row of texts cut at the maximum length
    metrics = (*OOD_METRICS, *(f"*_{m}" for m in OOD_METRICS), "truncated_inputs")
    view = OODBasicView

    def hazards(self, ctx: AuditContext) -> list[str]:
        return ood_hazards(ctx)

    def tasks(self, ctx: AuditContext) -> list[Task]:
        cache = ScoreCache(ctx, self.params["detectors"])
        tasks = [Task(h, bind(self._task, ctx, cache, h)) for h in self.hazards(ctx)]
        if tasks:
            tasks.append(Task("plots", bind(self._plots, ctx, cache)))
        return tasks

    def _task(self, ctx: AuditContext, cache: ScoreCache, hazard: str) -> TaskResult:
        sid, sout = cache.scores("clean"), cache.scores(hazard)
        rows: list[Row] = []
        for name in cache.names:
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, sid[name], sout[name], self.params["n_boot"], seed, plain=name == self.params["default"],
                **cache.info[name],
            )  # fmt: skip
        return TaskResult(rows + truncation_rows(ctx, hazard))

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        sid = cache.scores("clean")
        sets = {h: Hazard.parse(h).name or h for h in self.hazards(ctx)}
        panels = {name: (sid[name], {s: cache.scores(h)[name] for h, s in sets.items()}) for name in cache.names}
        caption = "Anomaly scores on the test data and on each OOD set, per detector."
        return TaskResult([], [Artifact("histograms", histograms_png(panels), caption=caption)])
