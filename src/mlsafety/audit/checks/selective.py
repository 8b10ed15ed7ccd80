"""Check ``selective``: if the model may abstain, how much can it answer, and how often is it wrong?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

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
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks.ood_basic import ScoreCache
from mlsafety.core import derive_seed
from mlsafety.metrics import bootstrap_weighted
from mlsafety.monitoring import selective as sel

METRICS = ("aurc", "eaurc", "augrc", "risk_at_coverage", "coverage_at_risk")


@register_check("selective")
class Selective(Check):
    pillar = "monitoring"
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

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        cache = ScoreCache(ctx, p["detectors"])
        scores = cache.scores("clean")
        correct = (ctx.outputs("clean").pred == ctx.labels("clean")).double().cpu()
        cov, risk = p["coverage"], p["risk"]
        # the point value from the direct function, resamples from weights over one sorted order
        fns: dict[str, tuple[Callable[..., torch.Tensor], Callable[[sel.SelectiveStats, torch.Tensor], torch.Tensor]]]
        fns = {
            "aurc": (sel.aurc, lambda s, w: s.aurc(w)),
            "eaurc": (sel.eaurc, lambda s, w: s.eaurc(w)),
            "augrc": (sel.augrc, lambda s, w: s.augrc(w)),
            "risk_at_coverage": (lambda c, k: sel.risk_at_coverage(c, k, cov), lambda s, w: s.risk_at_coverage(w, cov)),
            "coverage_at_risk": (
                lambda c, k: sel.coverage_at_risk(c, k, risk),
                lambda s, w: s.coverage_at_risk(w, risk),
            ),
        }
        rows: list[Row] = []
        curves = {}
        for name in cache.names:
            conf = -scores[name].double()
            stats = sel.SelectiveStats(conf, correct)
            curves[name] = sel.risk_coverage(conf, correct)
            for m, (direct, weighted) in fns.items():
                seed = derive_seed(ctx.seed, self.name, name, m)
                est = bootstrap_weighted(
                    lambda w, weighted=weighted, stats=stats: weighted(stats, w),  # type: ignore[misc]
                    stats.n, p["n_boot"], seed, name=m, value=float(direct(conf, correct)),
                )  # fmt: skip
                level = {"risk_at_coverage": {"coverage": cov}, "coverage_at_risk": {"risk": risk}}
                extra = level.get(m, {})
                rows.append(Row.of("clean", f"{name.replace('-', '_')}_{m}", est, detector=name, **extra))
                if name == p["default"]:
                    rows.append(Row.of("clean", m, est, detector=name, **extra))
        return TaskResult(rows, [Artifact("risk-coverage", _curves_png(curves), caption=_CAPTION)])

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("AURC (MSP)", r, higher_is_better=False) for r in rows if r.metric == "aurc"]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        per: dict[str, dict[str, StoredRow]] = {}
        for r in rows:
            det = r.params.get("detector")
            if det and r.metric.startswith(det.replace("-", "_") + "_"):
                per.setdefault(det, {})[r.metric[len(det) + 1 :]] = r
        body = [[d, *[_cell(v.get(m)) for m in METRICS]] for d, v in sorted(per.items(), key=lambda kv: _aurc(kv[1]))]
        return [Table("Confidence sources ranked by AURC [95% CI]", ["confidence = -score of", *METRICS], body)]


_CAPTION = "Risk-coverage curves on the test data (one point per distinct confidence)."


def _aurc(v: dict[str, StoredRow]) -> float:
    return v["aurc"].value if "aurc" in v else float("inf")


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def _curves_png(curves: dict[str, sel.RiskCoverage]) -> bytes:
    fig = figure(4.6, 3.4)
    ax = fig.add_subplot()
    for name, rc in curves.items():
        ax.step(rc.coverage.numpy(), rc.risk.numpy(), where="post", linewidth=1.3, label=name)
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("selective risk (error rate when answering)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    return to_png(fig)
