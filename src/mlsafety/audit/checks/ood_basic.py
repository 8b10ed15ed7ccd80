"""Check ``ood-basic``: can MSP and Energy tell every OOD set of the audit from the test data?

Also holds the helpers the ``ood`` and ``selective`` checks share (rows per detector, ranking
table, ROC and histogram plots).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._check import (
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    Task,
    TaskResult,
    fmt_value,
    register_check,
)
from mlsafety.audit._context import AuditContext
from mlsafety.audit._plots import figure, to_png
from mlsafety.core import InputError, derive_seed
from mlsafety.metrics import OOD_METRICS, ood_metrics
from mlsafety.monitoring import ood

FPR_NOTE = (
    "FPR@95 is stored in both conventions: fpr95_id_positive is the share of OOD inputs accepted at the threshold "
    "that keeps 95% of in-distribution inputs (in-distribution = positive: ODIN, OpenOOD v1.0), fpr95_ood_positive "
    "the share of in-distribution inputs flagged at the threshold that catches 95% of OOD inputs (OOD = positive: "
    "OpenOOD v1.5, pytorch-ood); compare each with a published table of the same convention. AUROC treats OOD "
    "inputs as positives; AUPR-In and AUPR-Out as in OpenOOD."
)


def metric_name(detector: str, metric: str) -> str:
    """Row metric for a detector's figure, e.g. ``max_logit_auroc``."""
    return f"{detector.replace('-', '_')}_{metric}"


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
    detector (and plainly for the default).

    Intervals come from :func:`~mlsafety.metrics.ood_metrics` (a fused, seeded bootstrap). The
    leading arguments are positional-only so a detector's own hyper-parameters (which may include
    ``seed``) can pass through ``params`` into the rows.
    """
    est = ood_metrics(in_scores, out_scores, n_boot=n_boot, seed=seed)
    rows = [Row.of(hazard, metric_name(detector, m), e, detector=detector, **params) for m, e in est.items()]
    if plain:
        rows += [Row.of(hazard, m, e, detector=detector, **params) for m, e in est.items()]
    return rows


class ScoreCache:
    """Fits detectors once on ``ctx.data.fit`` and caches their scores per hazard (shared pass)."""

    def __init__(self, ctx: AuditContext, names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None):
        self.ctx = ctx
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise InputError(f"detectors are listed more than once: {self.names}")
        self.params = {n: dict((params or {}).get(n, {})) for n in self.names}
        self._detectors: list[ood.Detector] | None = None
        self._scores: dict[str, dict[str, torch.Tensor]] = {}
        self.info: dict[str, dict[str, Any]] = {n: {} for n in self.names}
        self.prepare: Callable[[], None] | None = None
        """Runs once before the first scores are computed (e.g. tuning), inside a task."""

    @property
    def detectors(self) -> list[ood.Detector]:
        if self._detectors is None:
            ctx = self.ctx
            dets = [ood.create(n, **self.params[n]) for n in self.names]
            fit = ctx.data.fit
            ood.fit_detectors(dets, ctx.model, fit, ctx.batch_size, outputs=ctx.outputs_for(fit), labels=fit.y)
            self._detectors = dets
            for n, d in zip(self.names, dets):
                self.info[n] = {**hyper_parameters(d), **self.info[n]}
        return self._detectors

    def replace(self, name: str, detector: ood.Detector, **info: Any) -> None:
        """Use an already fitted detector for ``name`` (e.g. a tuned one)."""
        dets = self.detectors
        dets[self.names.index(name)] = detector
        self.info[name] = {**hyper_parameters(detector), **info}
        self._scores.clear()

    def scores(self, hazard: str) -> dict[str, torch.Tensor]:
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            prepare()
        if hazard not in self._scores:
            ctx = self.ctx
            x = ctx.hazard(hazard).x
            out = ood.score_detectors(self.detectors, ctx.model, x, ctx.batch_size, outputs=ctx.outputs(hazard))
            self._scores[hazard] = {n: s.cpu() for n, s in zip(self.names, out.values(), strict=True)}
        return self._scores[hazard]


def hyper_parameters(detector: ood.Detector) -> dict[str, Any]:
    """The detector's scalar hyper-parameters (what produced its numbers), for the row params."""
    return {
        k: v
        for k, v in vars(detector).items()
        if not k.endswith("_") and k != "chunk" and isinstance(v, (bool, int, float, str, type(None)))
    }


def histogram_png(title: str, in_scores: torch.Tensor, outs: Mapping[str, torch.Tensor]) -> bytes:
    """Overlaid score histograms: in-distribution against each OOD set."""
    return histograms_png({title: (in_scores, outs)})


def histograms_png(panels: Mapping[str, tuple[torch.Tensor, Mapping[str, torch.Tensor]]]) -> bytes:
    """One histogram panel per title: (in-distribution scores, OOD scores by set)."""
    fig = figure(4.6 * len(panels), 3.2)
    for i, (title, (in_scores, outs)) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        allv = torch.cat([in_scores, *outs.values()]).double()
        lo, hi = float(allv.quantile(0.005)), float(allv.quantile(0.995))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = torch.linspace(lo, hi, 41).tolist()
        ax.hist(in_scores.clamp(lo, hi).numpy(), bins=bins, density=True, alpha=0.55, label="in-distribution (test)")
        for name, s in outs.items():
            ax.hist(s.clamp(lo, hi).numpy(), bins=bins, density=True, histtype="step", linewidth=1.6, label=name)
        ax.set_xlabel("anomaly score (higher = more anomalous)")
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return to_png(fig)


def roc_points(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False and true positive rates (OOD = positive), one point per distinct threshold."""
    scores = torch.cat([in_scores, out_scores]).double()
    pos = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(out_scores))]).double()
    order = scores.argsort(descending=True, stable=True)
    s, p = scores[order], pos[order]
    end = torch.ones_like(s, dtype=torch.bool)
    end[:-1] = s[:-1] != s[1:]
    tpr = torch.cat([torch.zeros(1), (p.cumsum(0) / p.sum())[end]])
    fpr = torch.cat([torch.zeros(1), ((1 - p).cumsum(0) / (1 - p).sum())[end]])
    return fpr, tpr


def roc_png(panels: Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]) -> bytes:
    """One ROC panel per title, each with labelled (fpr, tpr) curves."""
    fig = figure(3.6 * len(panels), 3.5)
    for i, (title, curves) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        for label, (fpr, tpr) in curves.items():
            ax.plot(fpr.numpy(), tpr.numpy(), linewidth=1.4, label=label)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("FPR (in-distribution flagged)")
        if i == 1:
            ax.set_ylabel("TPR (OOD flagged)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def ranking_table(rows: Sequence[StoredRow], title: str) -> list[Table]:
    """Detectors ranked by mean AUROC over the OOD sets, with per-set AUROC and FPR@95 in both conventions."""
    per: dict[str, dict[str, dict[str, StoredRow]]] = {}
    for r in rows:
        det = r.params.get("detector")
        if det is None or not r.hazard.startswith("ood/"):
            continue
        for m in OOD_METRICS:
            if r.metric == metric_name(det, m):
                per.setdefault(det, {}).setdefault(r.hazard, {})[m] = r
    if not per:
        return []
    hazards = sorted({h for d in per.values() for h in d})
    ranked = sorted(
        per.items(), key=lambda kv: -sum(v["auroc"].value for v in kv[1].values() if "auroc" in v) / max(len(kv[1]), 1)
    )
    body = []
    for rank, (det, by_h) in enumerate(ranked, 1):
        aurocs = [by_h[h]["auroc"].value for h in hazards if h in by_h and "auroc" in by_h[h]]
        cells = [str(rank), det, fmt_value(sum(aurocs) / len(aurocs)) if aurocs else ""]
        for h in hazards:
            v = by_h.get(h, {})
            shown = [v[m] for m in ("auroc", "fpr95_id_positive", "fpr95_ood_positive") if m in v]
            cells.append(" / ".join(fmt_value(r.value) for r in shown) if len(shown) == 3 else "")
        first = next(iter(by_h[next(iter(by_h))].values()))
        hyper = {k: v for k, v in first.params.items() if k not in ("detector", "kind", "sets", "tuned_on")}
        text = ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())) or "none"
        tuned = first.params.get("tuned_on")
        cells.append(f"{text} (tuned on {tuned} outliers)" if tuned else f"{text} (paper defaults)")
        body.append(cells)
    headers = [
        "rank",
        "detector",
        "mean AUROC",
        *[f"{h[4:]} AUROC / FPR@95 ID+ / FPR@95 OOD+" for h in hazards],
        "hyper-parameters",
    ]
    return [Table(title, headers, body, FPR_TABLE_NOTE)]


FPR_TABLE_NOTE = (
    "FPR@95 ID+ (fpr95_id_positive): share of OOD inputs accepted at the threshold that keeps 95% of the test "
    "inputs (in-distribution = positive; ODIN, OpenOOD v1.0). FPR@95 OOD+ (fpr95_ood_positive): share of test "
    "inputs flagged at the threshold that catches 95% of the OOD inputs (OOD = positive; OpenOOD v1.5, "
    "pytorch-ood). Lower is better for both; they differ, so compare each with a table of the same convention."
)


def plain_headlines(rows: Sequence[StoredRow], label: str) -> list[Headline]:
    return [Headline(f"{label} {r.hazard[4:]}", r) for r in rows if r.metric == "auroc" and r.hazard.startswith("ood/")]


@register_check("ood-basic")
class OODBasic(Check):
    pillar = "monitoring"
    title = "OOD detection (baseline)"
    description = (
        "Maximum softmax probability and Energy, fitted on nothing, scored on the test data against every OOD set: "
        "AUROC, AUPR-In, AUPR-Out and FPR@95 (both conventions) with seeded bootstrap 95% intervals. " + FPR_NOTE
    )
    defaults: ClassVar[dict[str, Any]] = {"detectors": ["msp", "energy"], "default": "msp", "n_boot": 500}
    quick: ClassVar[dict[str, Any]] = {"n_boot": 200}
    metrics = (*OOD_METRICS, *(f"*_{m}" for m in OOD_METRICS))  # plain for the default, then per detector

    def hazards(self, ctx: AuditContext) -> list[str]:
        return [f"ood/{n}" for n in ctx.data.ood]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        cache = ScoreCache(ctx, self.params["detectors"])
        tasks = [Task(h, _bind(self._task, ctx, cache, h)) for h in self.hazards(ctx)]
        if tasks:
            tasks.append(Task("plots", _bind(self._plots, ctx, cache)))
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
        return TaskResult(rows)

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        sid = cache.scores("clean")
        panels = {name: (sid[name], {h[4:]: cache.scores(h)[name] for h in self.hazards(ctx)}) for name in cache.names}
        caption = "Anomaly scores on the test data and on each OOD set, per detector."
        return TaskResult([], [Artifact("histograms", histograms_png(panels), caption=caption)])

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return plain_headlines(rows, "MSP AUROC")

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        return ranking_table(rows, "Detectors ranked by mean AUROC (OOD = positive)")


def _bind(fn: Callable[..., TaskResult], *args: Any) -> Callable[[], TaskResult]:
    return lambda: fn(*args)
