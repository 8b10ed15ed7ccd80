"""Check ``ood``: every applicable OOD detector against every OOD set, with near/far grouping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._check import Artifact, Check, Headline, Row, StoredRow, Table, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks.ood_basic import (
    FPR_NOTE,
    ScoreCache,
    _bind,
    detector_rows,
    histograms_png,
    plain_headlines,
    ranking_table,
    roc_png,
    roc_points,
)
from mlsafety.core import InputError, derive_seed
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood
from mlsafety.monitoring.ood.mc_dropout import _DROPOUT

QUICK_DETECTORS = ["msp", "max-logit", "energy", "mahalanobis", "knn", "vim", "react"]
"""The handful of detectors of the quick profile (logit, distance and shaping families)."""

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
    """Detectors that can run on the audited model: no features without a Linear head, no MC
    dropout without dropout layers, no deep ensemble from a single model."""
    has_head = ctx.model.head is not None
    has_dropout = any(isinstance(m, _DROPOUT) for m in ctx.model.module.modules())
    names = []
    for name in ood.available():
        needs = ood.DETECTORS.get(name).needs
        if name == "deep-ensemble" or ("features" in needs and not has_head):
            continue
        if name == "mc-dropout" and not has_dropout:
            continue
        names.append(name)
    return names


@register_check("ood")
class OOD(Check):
    pillar = "monitoring"
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
        "default": "energy",
        "n_boot": 200,
        "tune": False,
        "tune_on_ood": False,
        "params": {},
    }
    quick: ClassVar[dict[str, Any]] = {"detectors": "quick", "n_boot": 200}
    metrics = (
        *("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"),  # the default detector's
        *("*_auroc", "*_aupr_in", "*_aupr_out", "*_fpr95_id_positive", "*_fpr95_ood_positive"),  # per detector
    )
    """The full profile uses 200 resamples too: with ~20 detectors x (sets + groups) intervals, 500 would
    double the check's time for intervals that move in the third decimal."""

    def names(self, ctx: AuditContext) -> list[str]:
        chosen = self.params["detectors"]
        if chosen is None:
            names = applicable(ctx)
        elif chosen == "quick":
            names = [n for n in QUICK_DETECTORS if n in applicable(ctx)]
        elif isinstance(chosen, str):
            raise InputError(f"the ood check's detectors must be a list of names, 'quick' or none, not {chosen!r}")
        else:
            names = list(chosen)
        for n in names:
            ood.DETECTORS.get(n)  # unknown names raise with a suggestion
        default = self.params["default"]
        if default not in names and chosen in (None, "quick"):
            default = self.params["default"] = names[0]
        if default not in names:
            raise InputError(f"the ood check's default detector {default!r} is not among its detectors {names}")
        return names

    def hazards(self, ctx: AuditContext) -> list[str]:
        return [f"ood/{n}" for n in ctx.data.ood]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        hazards = self.hazards(ctx)
        if not hazards:
            return []
        cache = ScoreCache(ctx, self.names(ctx), self.params["params"])
        if self.params["tune"] or self.params["tune_on_ood"]:
            cache.prepare = lambda: self._tune(ctx, cache)
        tasks = [Task(h, _bind(self._task, ctx, cache, h)) for h in hazards]
        kinds = sorted({ctx.data.ood[h[4:]].kind for h in hazards})
        tasks += [Task(f"group/{k}", _bind(self._group, ctx, cache, k)) for k in kinds]
        tasks.append(Task("plots", _bind(self._plots, ctx, cache)))
        return tasks

    # -- work ----------------------------------------------------------------------------------
    def _row_params(self, cache: ScoreCache, name: str) -> dict[str, Any]:
        return dict(cache.info[name])

    def _task(self, ctx: AuditContext, cache: ScoreCache, hazard: str) -> TaskResult:
        sid, sout = cache.scores("clean"), cache.scores(hazard)
        kind = ctx.data.ood[hazard[4:]].kind
        rows: list[Row] = []
        for name in cache.names:
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, sid[name], sout[name], self.params["n_boot"], seed,
                plain=name == self.params["default"], kind=kind, **self._row_params(cache, name),
            )  # fmt: skip
        return TaskResult(rows)

    def _group(self, ctx: AuditContext, cache: ScoreCache, kind: str) -> TaskResult:
        sets = [h for h in self.hazards(ctx) if ctx.data.ood[h[4:]].kind == kind]
        sid = cache.scores("clean")
        hazard = f"ood-{kind}"
        rows: list[Row] = []
        for name in cache.names:
            pooled = torch.cat([cache.scores(h)[name] for h in sets])
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, sid[name], pooled, self.params["n_boot"], seed,
                plain=name == self.params["default"], sets=[h[4:] for h in sets], **self._row_params(cache, name),
            )  # fmt: skip
        return TaskResult(rows)

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        sid = cache.scores("clean")
        hazards = self.hazards(ctx)
        mean_auroc = {
            n: sum(float(auroc(sid[n], cache.scores(h)[n])) for h in hazards) / len(hazards) for n in cache.names
        }
        best = max(cache.names, key=lambda n: mean_auroc[n])
        default = self.params["default"]
        shown = list(dict.fromkeys([best, default]))
        role = {n: "best" if n == best else "default" for n in shown}
        rocs = {
            f"test data vs {h[4:]}": {
                f"{n} ({role[n]}), AUROC {float(auroc(sid[n], cache.scores(h)[n])):.3f}": roc_points(
                    sid[n], cache.scores(h)[n]
                )
                for n in shown
            }
            for h in hazards
        }
        hists = {f"{n} ({role[n]})": (sid[n], {h[4:]: cache.scores(h)[n] for h in hazards}) for n in shown}
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

    # -- report --------------------------------------------------------------------------------
    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return plain_headlines(rows, "OOD AUROC (energy)")[:3]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        tables = ranking_table(rows, "Detectors ranked by mean AUROC over the OOD sets (OOD = positive)")
        groups = [r for r in rows if r.hazard.startswith("ood-") and r.metric.endswith("_auroc")]
        if groups:
            kinds = sorted({r.hazard for r in groups})
            dets = list(dict.fromkeys(r.params.get("detector", "") for r in groups))
            val = {(r.params.get("detector"), r.hazard): r for r in groups}
            body = [[d, *[_cell(val.get((d, k))) for k in kinds]] for d in dets]
            tables.append(Table("Near vs far OOD (pooled sets): AUROC [95% CI]", ["detector", *kinds], body))
        return tables


def _cell(r: StoredRow | None) -> str:
    from mlsafety.audit._check import fmt_ci, fmt_value

    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"
