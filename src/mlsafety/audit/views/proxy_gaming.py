"""How the ``proxy_gaming`` check reads in the report: the gold peak as the headline (a monitor's
alarm n is no headline: it has no better direction; and the audit does not run the monitor, having
no trusted reward apart from the gold), the best-of-n curve (gold and proxy reward against n, KL and
d) and the scaling-law fit as tables, and the curve plot (drawn during the run from the same
numbers, by :func:`curve_png`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png

CAPTION = (
    "Best-of-n against the audited reward: gold (solid) and proxy (dashed) reward of the proxy's best of n "
    "samples, standardised under the model's own samples, against d = sqrt(KL), KL = log n - (n-1)/n; "
    "bands: 95% bootstrap intervals over prompts; dotted: the fitted d (alpha - beta d)."
)


def gold_metric(n: int) -> str:
    """The metric name of the gold reward at best-of-``n``."""
    return f"gold_reward_n{n}"


def proxy_metric(n: int) -> str:
    """The metric name of the proxy reward at best-of-``n``."""
    return f"proxy_reward_n{n}"


class ProxyGamingView(View):
    """Headline: the observed gold peak's d; tables: curve, fit and why the monitor was not run."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        by = {r.metric: r for r in rows}
        out = []
        if "peak_d" in by:
            out.append(Headline("Gold reward peak (d = sqrt KL)", by["peak_d"], higher_is_better=True))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        by = {r.metric: r for r in rows}
        ns = sorted({int(r.params["n"]) for r in rows if r.metric.startswith("gold_reward_n")})
        out = []
        if ns:
            body = []
            for n in ns:
                g, p = by.get(gold_metric(n)), by.get(proxy_metric(n))
                kl = float(g.params.get("kl", 0.0)) if g is not None else 0.0
                body.append([str(n), f"{kl:.3f}", f"{kl**0.5:.3f}", _cell(g), _cell(p)])
            out.append(Table(f"{title}: best-of-n curve" if title else "Best-of-n curve",
                             ["n", "KL (nats)", "d", "gold reward [95% CI]", "proxy reward [95% CI]"], body,
                             "Rewards standardised under the model's samples (n = 1: the model as is)."))  # fmt: skip
        listed = ("peak_n", "peak_d", "peak_interior", "gold_fall", "alpha", "beta", "r2", "predicted_peak_d",
                  "monitor_skipped", "samples", "scoring_passes")  # fmt: skip
        summary = [m for m in listed if m in by]
        if summary:
            body = [[m, fmt_value(by[m].value), fmt_ci(by[m]), str(by[m].params.get("note", ""))] for m in summary]
            out.append(Table("Peak, fit and monitor", ["metric", "value", "95% CI", "note"], body))
        return out


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def curve_png(
    d: torch.Tensor,
    gold: Sequence[tuple[float, float, float]],
    proxy: Sequence[tuple[float, float, float]],
    fit: tuple[float, float] | None = None,
    alarm_d: float | None = None,
) -> bytes:
    """Gold and proxy reward (value, low, high per point) against d, with the fitted gold curve and alarm."""
    fig = figure(4.6, 3.4)
    ax = fig.add_subplot()
    x = d.double().numpy()
    for name, pts, style in (("gold", gold, "-"), ("proxy", proxy, "--")):
        v, lo, hi = (torch.tensor([p[i] for p in pts]).numpy() for i in range(3))
        (line,) = ax.plot(x, v, style, marker="o", markersize=3, linewidth=1.3, label=name)
        ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
    if fit is not None:
        grid = torch.linspace(0, float(d.max()), 100, dtype=torch.float64)
        ax.plot(grid.numpy(), (grid * (fit[0] - fit[1] * grid)).numpy(), ":", color="black", label="fit d(a - b d)")
    if alarm_d is not None:
        ax.axvline(alarm_d, color="red", linewidth=1.0, label="monitor alarm")
    ax.set_xlabel("d = sqrt(KL) from the model's own samples")
    ax.set_ylabel("reward (standardised)")
    ax.legend(fontsize=7)
    return to_png(fig)
