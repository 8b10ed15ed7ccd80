"""How the ``adversarial`` check reads in the report: the robust-accuracy headline and tables, and the
layout of its plots (drawn during the run, from tensors, by :func:`curve_png` and :func:`pairs_png`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mlsafety.audit._check import DECISION, Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.views._adversarial_text import text_headlines, text_tables
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.core import Hazard

Curve = list[tuple[float, float, float, float]]
"""Points of a robust-accuracy curve: (eps, value, ci_low, ci_high)."""


class AdversarialView(View):
    """Headline: robust accuracy of the first attack at the middle radius; tables: one line per
    attack and radius, and the sanity flags."""

    artifact_order = ("robust-accuracy-curve", "adversarial-pairs")

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        robust = [r for r in rows if r.metric == "robust_accuracy"]
        if not robust:
            return text_headlines(rows)  # a text model: the text-attack recipes' rows
        first = robust[0].params.get("attack")
        mine = [r for r in robust if r.params.get("attack") == first]
        mid = sorted(mine, key=lambda r: float(r.params.get("eps", 0)))[len(mine) // 2]
        return [Headline(f"Robust accuracy ({first}, eps {fmt_value(float(mid.params.get('eps', 0)))})", mid)]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        by: dict[Hazard, dict[str, StoredRow]] = {}
        warn = []
        for r in rows:
            hazard = Hazard.parse(r.hazard)
            if hazard.name is not None and hazard.within(Hazard.adversarial()):
                by.setdefault(hazard, {})[r.metric] = r
                if r.kind == DECISION:  # the attack's sanity flags
                    warn.append([r.hazard, r.metric, str(r.params.get("message", ""))])
        body = []
        for hazard, m in by.items():
            ra, asr, med = m.get("robust_accuracy"), m.get("attack_success_rate"), m.get("median_perturbation_norm")
            body.append([
                str(hazard.name), "" if hazard.eps is None else f"{hazard.eps:g}",
                "" if ra is None else f"{fmt_value(ra.value)} {fmt_ci(ra)}",
                "" if asr is None else fmt_value(asr.value),
                "" if med is None else fmt_value(med.value),
                "" if ra is None or ra.n is None else str(ra.n),
            ])  # fmt: skip
        tables = [Table("Robust accuracy", ["attack", "eps", "robust accuracy [95% CI]", "success rate",
                                            "median norm", "n"], body)]  # fmt: skip
        if warn:
            tables.append(Table("Sanity flags", ["hazard", "flag", "meaning"], warn))
        text = text_tables(rows)
        return (text if text and not body else tables + text) + late


def curve_png(curves: dict[str, Curve], clean: tuple[float, float, float], norm: str) -> bytes:
    """Robust accuracy against eps, one line per attack with its 95% band, starting at the clean
    accuracy ``(value, ci_low, ci_high)`` at eps 0."""
    fig = figure(5.0, 3.4)
    ax = fig.add_subplot()
    for name, pts in curves.items():
        xs = [0.0] + [p[0] for p in pts]
        ys = [clean[0]] + [p[1] for p in pts]
        lo = [clean[1]] + [p[2] for p in pts]
        hi = [clean[2]] + [p[3] for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel(f"eps ({norm}, pixel units)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def _image(x: torch.Tensor) -> Any:
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def pairs_png(clean: torch.Tensor, adv: torch.Tensor, pred_c: torch.Tensor, pred_a: torch.Tensor) -> bytes:
    """Clean inputs (top row) over their adversarial versions (bottom row), titled with predictions."""
    k = clean.shape[0]
    fig = figure(1.1 * k + 0.4, 2.6)
    for i in range(k):
        for row, (img, pred) in enumerate(((clean[i], pred_c[i]), (adv[i], pred_a[i]))):
            ax = fig.add_subplot(2, k, row * k + i + 1)
            ax.imshow(_image(img.cpu().float()), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(f"{'clean' if row == 0 else 'adv'}: {int(pred)}", fontsize=7)
            ax.axis("off")
    return to_png(fig)
