"""How the ``certified`` check reads in the report: the certified-accuracy headline and tables, the
one builder of its metric names (:func:`certified_metric`) and the layout of its curve
(:func:`curve_png`, drawn during the run from the certificates)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks._common import metric_name
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.robustness.smoothing import Certificate

HEADLINE_RADIUS = 0.25
"""The L2 radius of the scorecard's certified accuracy."""


def certified_metric(statistic: str, sigma: float, denoised: bool = False) -> str:
    """The stored name of ``statistic`` at noise level ``sigma`` (``certified_accuracy_sigma_0_25``,
    ``denoised_abstain_rate_sigma_0_5``): the identity is also in the row's params (``sigma``), and
    the view rebuilds a name from them to find a row, never parsing one."""
    return metric_name(f"{'denoised_' if denoised else ''}{statistic}_sigma", float(sigma))


def _curve_label(r: StoredRow) -> str | None:
    """``sigma 0.25`` or ``denoised sigma 0.25`` for a certified-accuracy row, None for any other row."""
    sigma = r.params.get("sigma")
    if not isinstance(sigma, (int, float)):
        return None
    for denoised in (False, True):
        if r.metric == certified_metric("certified_accuracy", sigma, denoised):
            return f"{'denoised ' if denoised else ''}sigma {float(sigma):g}"
    return None


def _interval(r: StoredRow) -> str:
    return f"[{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]"


class CertifiedView(View):
    """Headline: the best certified accuracy at r = :data:`HEADLINE_RADIUS`; tables: certified accuracy
    per radius (a column per noise level and denoiser), then every other row."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        plain = [
            r for r in rows
            if r.metric == certified_metric("certified_accuracy", r.params.get("sigma", 0.0))
            and r.params.get("radius") == HEADLINE_RADIUS
        ]  # fmt: skip
        if not plain:
            return []
        best = max(plain, key=lambda r: r.value)  # the best noise level, named: it is picked on these inputs
        label = f"Certified L2 accuracy at r = {HEADLINE_RADIUS:g}"
        if len(plain) > 1:
            label += f" (sigma {float(best.params['sigma']):g}, best of {len(plain)})"
        return [Headline(label, best)]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        curve = {id(r): label for r in rows if (label := _curve_label(r)) is not None}
        cols = sorted({(r.metric, curve[id(r)]) for r in rows if id(r) in curve})
        cell = {(f"{float(r.params['radius']):g}", r.metric): r for r in rows if id(r) in curve}
        radii = sorted({rad for rad, _ in cell}, key=float)
        body = []
        for rad in radii:
            line = [rad]
            for metric, _ in cols:
                r = cell.get((rad, metric))
                line.append("" if r is None else f"{fmt_value(r.value)} {_interval(r)}")
            body.append(line)
        tables = [Table("Certified accuracy (95% CI)", ["L2 radius", *[c[1] for c in cols]], body)] if curve else []
        other = [r for r in rows if id(r) not in curve]
        if other:
            tables.append(
                Table(
                    "Abstentions, radii and attack consistency",
                    ["hazard", "metric", "value", "95% CI", "n"],
                    [
                        [r.hazard, r.metric, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)]
                        for r in other
                    ],
                )
            )
        return tables + late


def curve_png(curves: dict[str, Certificate], y: torch.Tensor, sigma: float) -> bytes:
    """Certified accuracy against L2 radius, one line per smoothed classifier (plain, denoised)."""
    fig = figure(4.6, 3.2)
    ax = fig.add_subplot()
    for label, cert in curves.items():
        radius = torch.where(cert.prediction.cpu() == y, cert.radius.cpu(), torch.full_like(cert.radius.cpu(), -1.0))
        top = max(float(radius.max()), 0.05) * 1.1
        grid = torch.linspace(0, top, 200, dtype=torch.float64)
        acc = (radius[None, :] >= grid[:, None]).double().mean(dim=1)
        ax.plot(grid.numpy(), acc.numpy(), label=label)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"sigma = {sigma:g}")
    ax.legend(frameon=False)
    return to_png(fig)
