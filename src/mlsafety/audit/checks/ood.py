"""Check ``ood``: every applicable OOD detector against every OOD set, with near/far grouping.

The work is the library's (:class:`mlsafety.monitoring.ood.ScoreCache`, :func:`mlsafety.monitoring.ood.tune`,
:func:`mlsafety.metrics.roc_points`); this module chooses the detectors and turns their scores into
rows and plots. The report view is :class:`~mlsafety.audit.views.ood.OODView`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import ScoreCache, bind, truncation_rows
from mlsafety.audit.checks.ood_basic import detector_rows, ood_hazards
from mlsafety.audit.views.ood import OODView
from mlsafety.audit.views.ood_basic import FPR_NOTE, histograms_png, roc_png
from mlsafety.core import Hazard, InputError, derive_seed
from mlsafety.metrics import OOD_METRICS, auroc, roc_points
from mlsafety.monitoring import ood

TUNE_GRIDS: dict[str, dict[str, list[Any]]] = {
    "react": {"percentile": [80, 85, 90, 95, 99]},
    "ash": {"percentile": [65, 75, 85, 90, 95]},
    "scale": {"percentile": [65, 75, 85, 90, 95]},
    "dice": {"percentile": [50, 70, 90]},
    "knn": {"k": [1, 5, 10, 20, 50]},
    "odin": {"noise": [0.0, 0.0007, 0.0014, 0.0028]},
}
"""Hyper-parameters searched when the check's ``tune`` parameter is on."""


def applicable(ctx: AuditContext) -> list[str]:
    """Detectors that can run on the audited model, sorted: none for another modality
    (:func:`mlsafety.monitoring.ood.modalities`: on text, only those fed by the shared forward pass),
    none that needs features without a Linear head, dropout layers the model lacks (tag
    ``needs-dropout``) or several models (``needs-members``)."""
    has_head = ctx.model.head is not None
    has_dropout = bool(ood.dropout_layers(ctx.model.module))
    names = []
    for name in ood.available():
        tags = ood.DETECTORS.tags(name)
        if ctx.modality not in ood.modalities(name):
            continue
        if ood.NEEDS_MEMBERS in tags or ("features" in ood.DETECTORS.get(name).needs and not has_head):
            continue
        if ood.NEEDS_DROPOUT in tags and not has_dropout:
            continue
        names.append(name)
    return names


def quick_detectors(ctx: AuditContext) -> list[str]:
    """The quick profile's detectors (tag ``quick``) that can run on the audited model, sorted."""
    runnable = set(applicable(ctx))
    return [n for n in ood.DETECTORS.tagged(ood.QUICK) if n in runnable]


def group_hazard(kind: str) -> str:
    """The hazard of an OOD group's pooled sets (``ood-near``, ``ood-far``)."""
    return str(Hazard(f"ood-{kind}"))


@register_check("ood")
class OOD(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "OOD detection"
    description = (
        "Every applicable detector, fitted on in-distribution data only, scored on the test data against each OOD "
        "set (one shared forward pass feeds all logit and feature detectors). AUROC, AUPR-In, AUPR-Out and "
        "FPR@95 (both conventions) with seeded bootstrap 95% intervals; `ood-near`/`ood-far` pool the sets of "
        "each kind. "
        "Hyper-parameters are the papers' defaults unless tuned on synthetic outliers made from validation data "
        "(never on the OOD test sets unless `tune_on_ood` is set, which the table marks). " + FPR_NOTE
    )
    defaults: ClassVar[dict[str, Any]] = {
        "detectors": None,
        "default": None,
        "n_boot": 200,
        "tune": False,
        "tune_on_ood": False,
        "params": {},
    }
    quick: ClassVar[dict[str, Any]] = {"detectors": "quick", "n_boot": 200}
    # plain for the default, then per detector, then the warning row of texts cut at the maximum length
    metrics = (*OOD_METRICS, *(f"*_{m}" for m in OOD_METRICS), "truncated_inputs")
    """The full profile uses 200 resamples too: with ~20 detectors x (sets + groups) intervals, 500 would
    double the check's time for intervals that move in the third decimal."""
    view = OODView

    DEFAULT_DETECTOR: ClassVar[dict[str, str]] = {"image": "energy", "text": "mahalanobis"}
    """The headline detector when ``default`` is not set, per modality: energy for images (Liu et al.,
    "Energy-based Out-of-distribution Detection", NeurIPS 2020); Mahalanobis distance on the
    classifier's features for text (Podolskiy et al., "Revisiting Mahalanobis Distance for
    Transformer-Based Out-of-Domain Detection", AAAI 2021, where it led the logit-based scores on
    fine-tuned transformers)."""

    def names(self, ctx: AuditContext) -> list[str]:
        chosen = self.params["detectors"]
        if chosen is None:
            names = applicable(ctx)
        elif chosen == "quick":
            names = quick_detectors(ctx)
        elif isinstance(chosen, str):
            raise InputError(f"the ood check's detectors must be a list of names, 'quick' or none, not {chosen!r}")
        else:
            names = list(chosen)
        for n in names:
            ood.DETECTORS.get(n)  # unknown names raise with a suggestion
        if self.params["default"] is None:
            self.params["default"] = self.DEFAULT_DETECTOR[ctx.modality]
        default = self.params["default"]
        if default not in names and chosen in (None, "quick"):
            default = self.params["default"] = names[0]
        if default not in names:
            raise InputError(f"the ood check's default detector {default!r} is not among its detectors {names}")
        return names

    def hazards(self, ctx: AuditContext) -> list[str]:
        return ood_hazards(ctx)

    def tasks(self, ctx: AuditContext) -> list[Task]:
        hazards = self.hazards(ctx)
        if not hazards:
            return []
        tune = self.params["tune"] or self.params["tune_on_ood"]
        if tune and ctx.modality != "image":
            raise InputError(f"the ood check's tune and tune_on_ood need image inputs (synthetic outliers "
                             f"made of pixels); turn them off for a {ctx.modality} model")  # fmt: skip
        cache = ScoreCache(ctx, self.names(ctx), self.params["params"])
        if tune:
            cache.prepare = lambda: self._tune(ctx, cache)
        tasks = [Task(h, bind(self._task, ctx, cache, h)) for h in hazards]
        kinds = sorted({self._kind(ctx, h) for h in hazards})
        tasks += [Task(f"group/{k}", bind(self._group, ctx, cache, k)) for k in kinds]
        tasks.append(Task("plots", bind(self._plots, ctx, cache)))
        return tasks

    # -- work ----------------------------------------------------------------------------------
    @staticmethod
    def _kind(ctx: AuditContext, hazard: str) -> str:
        """``near`` or ``far``: the kind of the OOD set behind ``hazard``."""
        return ctx.hazard(hazard).kind

    def _task(self, ctx: AuditContext, cache: ScoreCache, hazard: str) -> TaskResult:
        sid, sout = cache.scores("clean"), cache.scores(hazard)
        kind = self._kind(ctx, hazard)
        rows: list[Row] = []
        for name in cache.names:
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, sid[name], sout[name], self.params["n_boot"], seed,
                plain=name == self.params["default"], kind=kind, **cache.info[name],
            )  # fmt: skip
        return TaskResult(rows + truncation_rows(ctx, hazard))

    def _group(self, ctx: AuditContext, cache: ScoreCache, kind: str) -> TaskResult:
        sets = [h for h in self.hazards(ctx) if self._kind(ctx, h) == kind]
        sid = cache.scores("clean")
        hazard = group_hazard(kind)
        rows: list[Row] = []
        for name in cache.names:
            pooled = torch.cat([cache.scores(h)[name] for h in sets])
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, sid[name], pooled, self.params["n_boot"], seed,
                plain=name == self.params["default"], sets=[Hazard.parse(h).name for h in sets], **cache.info[name],
            )  # fmt: skip
        return TaskResult(rows)

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        sid = cache.scores("clean")
        sets = {h: Hazard.parse(h).name or h for h in self.hazards(ctx)}
        mean_auroc = {n: sum(float(auroc(sid[n], cache.scores(h)[n])) for h in sets) / len(sets) for n in cache.names}
        best = max(cache.names, key=lambda n: mean_auroc[n])
        default = self.params["default"]
        shown = list(dict.fromkeys([best, default]))
        role = {n: "best" if n == best else "default" for n in shown}
        rocs = {
            f"test data vs {s}": {
                f"{n} ({role[n]}), AUROC {float(auroc(sid[n], cache.scores(h)[n])):.3f}": roc_points(
                    sid[n], cache.scores(h)[n]
                )
                for n in shown
            }
            for h, s in sets.items()
        }
        hists = {f"{n} ({role[n]})": (sid[n], {s: cache.scores(h)[n] for h, s in sets.items()}) for n in shown}
        return TaskResult(
            [],
            [
                Artifact("roc", roc_png(rocs), caption=f"ROC curves of the best detector ({best}) and the default "
                         f"({default}) on each OOD set (mean AUROC {mean_auroc[best]:.3f} vs "
                         f"{mean_auroc[default]:.3f})."),
                Artifact("histograms", histograms_png(hists),
                         caption="Anomaly scores of the best and the default detector: test data vs each OOD set."),
            ],
        )  # fmt: skip

    def _tune(self, ctx: AuditContext, cache: ScoreCache) -> None:
        on_ood = bool(self.params["tune_on_ood"])
        val = ctx.data.val
        g = ctx.generator(self.name, "tune")
        ood_x = torch.cat([d.x for d in ctx.data.ood.values()]) if on_ood else None
        for name in cache.names:
            grid = TUNE_GRIDS.get(name)
            if grid is None or name in self.params["params"]:
                continue
            tuned = ood.tune(name, grid, ctx.model, ctx.data.fit, val.x, g, ood_data=ood_x, use_ood_data=on_ood)
            cache.replace(name, tuned.detector, tuned_on=tuned.tuned_on, **tuned.params)
