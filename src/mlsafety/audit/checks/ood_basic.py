"""Check ``ood-basic``: can MSP and Energy tell every OOD set of the audit from the test data?

The work is the library's (:class:`mlsafety.monitoring.ood.ScoreCache`: detectors fitted once, scores
from the audit's shared forward passes; :func:`mlsafety.metrics.ood_metrics`: the metrics with
intervals); this module turns them into rows. The report view is
:class:`~mlsafety.audit.views.ood_basic.OODBasicView`. :func:`detector_rows` serves the ``ood`` check
too; the audit-bound score cache is :class:`mlsafety.audit.checks._common.ScoreCache`.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import torch

from mlsafety import zoo
from mlsafety.audit._check import DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import ScoreCache, bind, require_int, require_names, truncation_rows
from mlsafety.audit.views.ood_basic import CONSTRUCTED, FPR_NOTE, OODBasicView, detector_metric, histograms_png
from mlsafety.core import ArrayDataset, Hazard, InputError, derive_seed
from mlsafety.metrics import OOD_METRICS, ood_metrics
from mlsafety.monitoring import ood


def detector_rows(
    hazard: str,
    detector: str,
    in_scores: torch.Tensor,
    out_scores: torch.Tensor,
    n_boot: int,
    seed: int,
    /,
    plain: bool = False,
    monitored: str | None = None,
    **params: Any,
) -> list[Row]:
    """The OOD metrics (:data:`~mlsafety.metrics.OOD_METRICS`) with bootstrap intervals, named per
    detector (:func:`~mlsafety.audit.views.ood_basic.detector_metric`) and, with ``plain``, also under
    the plain names for the check's monitored (default) detector; ``monitored`` (how that detector was
    chosen) is then stored with both, so a view can tell the monitored detector's rows.

    Intervals come from :func:`~mlsafety.metrics.ood_metrics` (a fused, seeded bootstrap). The
    leading arguments are positional-only so a detector's own hyper-parameters (which may include
    ``seed``) can pass through ``params`` into the rows.
    """
    est = ood_metrics(in_scores, out_scores, n_boot=n_boot, seed=seed)
    if plain and monitored is not None:
        params = {**params, "monitored": monitored}
    rows = [Row.of(hazard, detector_metric(detector, m), e, detector=detector, **params) for m, e in est.items()]
    if plain:
        rows += [Row.of(hazard, m, e, detector=detector, **params) for m, e in est.items()]
    return rows


def ood_hazards(ctx: AuditContext) -> list[str]:
    """The audit's OOD sets as hazards (``ood/<set>``), in the data's order."""
    return [str(Hazard.ood(n)) for n in ctx.data.ood]


@cache
def native_shape(name: str) -> tuple[int, ...]:
    """The image shape (C, H, W) the zoo OOD set ``name`` is constructed at (what
    :func:`mlsafety.zoo.load_dataset` gives without a ``shape``)."""
    return tuple(int(s) for s in zoo.load_dataset(name).x.shape[1:])


def zoo_set(data: ArrayDataset) -> str | None:
    """The zoo name of ``data`` when it is the zoo's own set (not a user's file that shares the name)."""
    if data.name not in zoo.dataset_names():
        return None
    return data.name if data.description == zoo.dataset_info(data.name).description else None


def made_for(name: str) -> list[str]:
    """The zoo in-distribution sets the zoo OOD set ``name`` was made for (those that list it)."""
    return [n for n in zoo.dataset_names() if name in zoo.dataset_info(n).ood]


def constructed_set_rows(ctx: AuditContext, hazard: str) -> list[Row]:
    """The warning row of an OOD hazard whose set is one of the zoo's constructed sets used on data it was
    not made for (a user's data, or a zoo set that does not list it): its figures say little about the OOD
    inputs the model will meet, the more so when it was resized (8x8 grey letters up-sampled for a
    3x32x32 model). None for a user's set, or a constructed set on the data it was made for."""
    data = ctx.hazard(hazard)
    name = zoo_set(data)
    if ctx.modality != "image" or name is None or zoo.dataset_info(name).kind == "in":
        return []
    targets = made_for(name)
    if zoo_set(ctx.data.test) in targets:
        return []
    made, used = "x".join(map(str, native_shape(name))), "x".join(str(int(s)) for s in data.x.shape[1:])
    resized = f" (at {made}) and is resized to {used} for this model" if made != used else ""
    message = (
        f"the constructed OOD set {name!r} was made for {' and '.join(targets) or 'no particular data'}{resized}; "
        "its figures say little about the OOD inputs this model will meet: give your own with --ood near:PATH "
        "or --ood far:PATH"
    )
    return [Row.exact(str(Hazard.parse(hazard)), CONSTRUCTED, 1.0, DECISION, made_for=targets, made_at=made,
                      used_at=used, message=message)]  # fmt: skip


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
    # plain for the default, then per detector, then the warning rows (texts cut, a resized constructed set)
    metrics = (*OOD_METRICS, *(f"*_{m}" for m in OOD_METRICS), "truncated_inputs", CONSTRUCTED)
    view = OODBasicView

    def hazards(self, ctx: AuditContext) -> list[str]:
        return ood_hazards(ctx)

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params  # checked when the audit is planned, before its run is stored
        names = require_names(self.name, p, "detectors", "['msp', 'energy']")
        for n in names:
            ood.DETECTORS.get(n)  # an unknown name fails with a suggestion
            if ctx.modality not in ood.modalities(n):
                raise InputError(f"ood-basic: detector {n!r} does not work on {ctx.modality} models; "
                                 f"use detectors tagged {ctx.modality!r} (`mlsafety ood list`)")  # fmt: skip
        if not isinstance(p["default"], str) or p["default"] not in names:  # its rows are the scorecard's headlines
            raise InputError(
                f"ood-basic: default must name one of the detectors it runs ({', '.join(names)}), got {p['default']!r}"
            )
        require_int(self.name, p, "n_boot", 1)
        cache = ScoreCache(ctx, names)
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
        return TaskResult(rows + truncation_rows(ctx, hazard) + constructed_set_rows(ctx, hazard))

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        sid = cache.scores("clean")
        sets = {h: Hazard.parse(h).name or h for h in self.hazards(ctx)}
        panels = {name: (sid[name], {s: cache.scores(h)[name] for h, s in sets.items()}) for name in cache.names}
        caption = "Anomaly scores on the test data and on each OOD set, per detector."
        return TaskResult([], [Artifact("histograms", histograms_png(panels), caption=caption)])
