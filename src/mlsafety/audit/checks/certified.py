"""Check ``certified``: randomized-smoothing certificates (Cohen et al. 2019) and their consistency with attacks.

For each configured noise level sigma, the test inputs are certified with
:class:`~mlsafety.robustness.smoothing.SmoothedClassifier`; the share of inputs that are correctly
classified *and* certified at L2 radius r is stored for every configured r (hazard
``adversarial/any-l2/<r>``: any perturbation of L2 norm below r), with its exact interval. When the
audit data are the embedded digits, the shipped denoiser for that sigma is also certified in front of
the model (denoised smoothing). Then the consistency test: the certified inputs are attacked inside
their certified radius by the L2 attacks of the registry and by a Monte-Carlo-gradient PGD on the
smoothed classifier; a *violation* is a confident smoothed prediction of another class. A correct
certificate allows a violation only with probability about 2 alpha per input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

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
from mlsafety.core import InputError, UnknownNameError
from mlsafety.metrics import bootstrap_mean, proportion
from mlsafety.robustness.smoothing import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    attack_certificates,
    registry_attack,
)

CHECK = "certified"
ATTACK_BUDGET = {"steps": 10, "n_queries": 100, "n_target_classes": 2, "restarts": 1}
"""Budgets of the registry attacks against the smoothed classifier (every call costs ``m`` forwards)."""


def _tag(sigma: float) -> str:
    return f"{sigma:g}".replace(".", "_")


def _denoiser(ctx: AuditContext, sigma: float) -> nn.Module | None:
    """The shipped digits denoiser for ``sigma`` when the audit data are the embedded digits."""
    from mlsafety import zoo

    name = f"digits-denoiser-{round(sigma * 100)}"
    if ctx.data.test.name != "digits" or tuple(ctx.data.test.x.shape[1:]) != zoo.DIGITS_SHAPE:
        return None
    if name not in zoo.model_names() or abs(round(sigma * 100) - sigma * 100) > 1e-9:
        return None
    return zoo.load_model(name).to(ctx.device)


@register_check("certified")
class Certified(Check):
    pillar = "robustness"
    title = "Certified robustness (randomized smoothing)"
    description = (
        "Certified L2 accuracy of the Gaussian-smoothed model (Cohen et al. 2019: Clopper-Pearson bound, radius "
        "sigma * inverse-normal(pA)) against radius, with exact 95% intervals; denoised smoothing with the shipped "
        "denoiser on the embedded data; and a consistency test: attacks from the registry, run on the smoothed "
        "classifier with Monte-Carlo gradients inside each certified radius, must not change its prediction."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "sigmas": [0.25, 0.5],
        "radii": [0.0, 0.25, 0.5, 0.75, 1.0],
        "num_inputs": 100,
        "n0": 64,
        "n": 500,
        "alpha": 0.001,
        "denoised": True,
        "attacks": ["pgd", "apgd-ce"],
        "num_attacked": 8,
        "batch_size": 1000,
    }
    quick: ClassVar[dict[str, Any]] = {
        "sigmas": [0.25],
        "num_inputs": 40,
        "n": 300,
        "attacks": ["pgd"],
        "num_attacked": 4,
    }
    metrics = (
        "certified_accuracy_sigma_*", "abstain_rate_sigma_*", "mean_certified_radius_sigma_*",
        "denoised_certified_accuracy_sigma_*", "denoised_abstain_rate_sigma_*",
        "denoised_mean_certified_radius_sigma_*", "violation_rate_sigma_*",
    )  # fmt: skip

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params
        for s in p["sigmas"]:
            if not float(s) > 0:
                raise InputError(f"check 'certified': every sigma must be positive, got {s}")
        return [self._task(ctx, float(s)) for s in p["sigmas"]]

    def _task(self, ctx: AuditContext, sigma: float) -> Task:
        return Task(f"sigma-{sigma:g}", lambda: self._run_sigma(ctx, sigma))

    def _run_sigma(self, ctx: AuditContext, sigma: float) -> TaskResult:
        p = self.params
        data = ctx.hazard("clean")
        k = min(int(p["num_inputs"]), len(data))
        if k < 1:
            raise InputError("check 'certified' needs at least one test input (num_inputs >= 1)")
        idx = torch.randperm(len(data), generator=ctx.generator("certified", "inputs"))[:k]
        x, y = data.x[idx], data.y[idx]
        tag = _tag(sigma)
        common = {"sigma": sigma, "n0": p["n0"], "n": p["n"], "alpha": p["alpha"]}
        rows: list[Row] = []
        curves: dict[str, Certificate] = {}
        variants: list[tuple[str, nn.Module | None]] = [("", None)]
        if p["denoised"]:
            den = _denoiser(ctx, sigma)
            if den is not None:
                variants.append(("denoised_", den))
        for prefix, den in variants:
            smoothed = SmoothedClassifier(ctx.model, ctx.model.num_classes, sigma, den, int(p["batch_size"]))
            gen = ctx.generator("certified", sigma, prefix or "plain")
            cert = smoothed.certify(x, int(p["n0"]), int(p["n"]), float(p["alpha"]), generator=gen)
            curves[prefix.rstrip("_") or "smoothed"] = cert
            for r in p["radii"]:
                est = proportion(cert.certified_accuracy(y, float(r)).cpu())
                rows.append(
                    Row.of(
                        f"adversarial/any-l2/{float(r):g}",
                        f"{prefix}certified_accuracy_sigma_{tag}",
                        est,
                        radius=float(r),
                        **common,
                    )
                )
            rows.append(
                Row.of(
                    "clean",
                    f"{prefix}abstain_rate_sigma_{tag}",
                    proportion((cert.prediction == ABSTAIN).cpu()),
                    **common,
                )
            )
            correct_radius = torch.where(
                cert.prediction.cpu() == y, cert.radius.cpu(), torch.zeros_like(cert.radius.cpu())
            )
            rows.append(
                Row.of(
                    "clean",
                    f"{prefix}mean_certified_radius_sigma_{tag}",
                    bootstrap_mean(correct_radius, seed=ctx.seed_for(CHECK, sigma, prefix or "plain"), name="radius"),
                    **common,
                )
            )
            if prefix:
                continue
            rows += self._consistency(ctx, smoothed, x, cert, sigma, tag, common)
        return TaskResult(
            rows,
            [
                Artifact(
                    f"certified-accuracy-sigma-{tag}",
                    _curve_png(curves, y, sigma),
                    caption=f"Certified L2 accuracy against radius, sigma = {sigma:g}, "
                    f"{k} test inputs, n = {p['n']}, alpha = {p['alpha']}.",
                )
            ],
        )

    def _consistency(
        self,
        ctx: AuditContext,
        smoothed: SmoothedClassifier,
        x: torch.Tensor,
        cert: Certificate,
        sigma: float,
        tag: str,
        common: dict[str, object],
    ) -> list[Row]:
        p = self.params
        certified = (cert.prediction != ABSTAIN).nonzero()[:, 0][: int(p["num_attacked"])]
        if certified.numel() == 0:
            return []
        sub = Certificate(
            cert.prediction[certified], cert.radius[certified], cert.p_lower[certified], cert.samples[certified]
        )
        xs = x[certified.cpu()]
        rows = []
        names: list[str | None] = [None, *p["attacks"]]
        for name in names:
            label = name or "smoothed-pgd-l2"
            try:
                starts = ctx.generator(CHECK, sigma, label, "attack")
                attack = None if name is None else registry_attack(name, generator=starts, **ATTACK_BUDGET)
            except UnknownNameError:
                raise InputError(f"check 'certified': unknown attack {name!r} in attacks=") from None
            result = attack_certificates(
                smoothed,
                xs,
                sub,
                attack=attack,
                name=label,
                n=int(p["n"]),
                alpha=float(p["alpha"]),
                generator=ctx.generator("certified", sigma, label),
            )
            rows.append(
                Row.of(
                    f"adversarial/{label}/certified-radius",
                    f"violation_rate_sigma_{tag}",
                    proportion(result.violated),
                    attack=label,
                    **common,
                )
            )
        return rows

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        plain = [r for r in rows if r.metric.startswith("certified_accuracy_sigma_") and r.hazard.endswith("/0.25")]
        if not plain:
            return []
        best = max(plain, key=lambda r: r.value)
        return [Headline("Certified L2 accuracy at r = 0.25", best)]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        curve = [r for r in rows if "certified_accuracy_sigma_" in r.metric]
        cols = sorted({r.metric for r in curve})
        radii = sorted({r.hazard.rsplit("/", 1)[-1] for r in curve}, key=float)
        cell = {(r.hazard.rsplit("/", 1)[-1], r.metric): r for r in curve}
        body = []
        for rad in radii:
            line = [rad]
            for c in cols:
                r = cell.get((rad, c))
                line.append(
                    "" if r is None else f"{fmt_value(r.value)} [{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]"
                )
            body.append(line)
        headers = [
            "L2 radius",
            *[
                c.replace("_certified_accuracy_sigma_", " sigma ")
                .replace("certified_accuracy_sigma_", "sigma ")
                .replace("_", ".")
                for c in cols
            ],
        ]
        tables = [Table("Certified accuracy (95% CI)", headers, body)] if curve else []
        other = [r for r in rows if r not in curve]
        if other:
            tables.append(
                Table(
                    "Abstentions, radii and attack consistency",
                    ["hazard", "metric", "value", "95% CI", "n"],
                    [
                        [
                            r.hazard,
                            r.metric,
                            fmt_value(r.value),
                            f"[{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]",
                            str(r.n),
                        ]
                        for r in other
                    ],
                )
            )
        return tables


def _curve_png(curves: dict[str, Certificate], y: torch.Tensor, sigma: float) -> bytes:
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
