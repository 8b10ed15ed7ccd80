"""How the ``selective`` check reads in the report: the AURC headline, confidence sources ranked by
AURC, and the risk-coverage curves (drawn during the run, by :func:`curves_png`)."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks._common import metric_name
from mlsafety.monitoring import selective as sel

CAPTION = (
    "Risk-coverage curves on the test data (one point per distinct confidence; each point's risk is drawn over "
    "the coverage it adds, so the area under a curve is its AURC)."
)
TARGETS = {"risk_at_coverage": ("coverage", "risk at coverage"), "coverage_at_risk": ("risk", "coverage at risk")}
"""The metrics read at a target: the row param that holds it and the column's words."""
NOTE = (
    "Shares, or areas under shares (AURC, E-AURC, AUGRC), from 0 to 1; lower is better except coverage at "
    "risk. The coverage at a target risk is the largest whose risk on the same test data is at most the "
    "target: the threshold is chosen on the data it is scored on, so its risk on new data may exceed the "
    "target (no guarantee, e.g. SGR, is computed)."
)


def source_metric(source: str, metric: str) -> str:
    """The metric name of ``metric`` for the confidence source ``source`` (``max-logit``: ``max_logit_aurc``)."""
    return metric_name(source, metric)


class SelectiveView(View):
    """Headline: AURC of the default confidence; table: every confidence source ranked by AURC."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline(f"AURC (confidence: -{r.params.get('detector', 'msp')} score)", r, higher_is_better=False)
                for r in rows if r.metric == "aurc"]  # fmt: skip

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        by = {r.metric: r for r in rows}
        per: dict[str, dict[str, StoredRow]] = {}
        for r in rows:
            det = r.params.get("detector")
            if isinstance(det, str) and det not in per:
                found = {m: by[source_metric(det, m)] for m in sel.METRICS if source_metric(det, m) in by}
                if found:
                    per[det] = found
        body = [
            [d, *[_cell(v.get(m)) for m in sel.METRICS]] for d, v in sorted(per.items(), key=lambda kv: _aurc(kv[1]))
        ]
        headers = ["confidence = -score of", *[_header(m, per) for m in sel.METRICS]]
        return [Table("Confidence sources ranked by AURC [95% CI]", headers, body, NOTE)]


def _header(metric: str, per: dict[str, dict[str, StoredRow]]) -> str:
    """The column's name; for a metric read at a target, with the target the rows record."""
    if metric not in TARGETS:
        return metric
    param, words = TARGETS[metric]
    targets = {float(v[metric].params[param]) for v in per.values() if metric in v and param in v[metric].params}
    return f"{words} {fmt_value(targets.pop())}" if len(targets) == 1 else words


def _aurc(v: dict[str, StoredRow]) -> float:
    return v["aurc"].value if "aurc" in v else float("inf")


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def curves_png(curves: dict[str, sel.RiskCoverage]) -> bytes:
    """Risk-coverage step curves, one per confidence source: each point's selective risk drawn over the
    coverage its tie group adds (from the previous point, or 0), the steps whose area is the AURC."""
    fig = figure(4.6, 3.4)
    ax = fig.add_subplot()
    for name, rc in curves.items():
        cov = [0.0, *rc.coverage.tolist()]
        risk = [float(rc.risk[0]), *rc.risk.tolist()]
        ax.step(cov, risk, where="pre", linewidth=1.3, label=name)
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("selective risk (error rate when answering)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    return to_png(fig)
