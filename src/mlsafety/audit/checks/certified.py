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

import math
import weakref
from typing import Any, ClassVar

import torch
from torch import nn

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, stopped_note, until_deadline
from mlsafety.audit._check import Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import bind, require_int, require_number
from mlsafety.audit.views.certified import CertifiedView, certified_metric, curve_png
from mlsafety.core import Hazard, InputError, UnknownNameError
from mlsafety.metrics import proportion
from mlsafety.robustness import summarize_certificates
from mlsafety.robustness.smoothing import ABSTAIN, Certificate, SmoothedClassifier, attack_certificates, registry_attack

CHECK = "certified"
_CERTS: weakref.WeakKeyDictionary[AuditContext, dict[tuple[float, bool], Certificate]] = weakref.WeakKeyDictionary()
"""Certificates per audit context, (sigma, denoised): the certification task's, reused by the consistency tasks."""
DEADLINE_CHUNK = 2
"""Inputs certified per step under ``--budget`` (the loop stops at the task's deadline between steps)."""
_CERT_FIELDS = ("prediction", "radius", "p_lower", "samples")
ATTACK_BUDGET = {"steps": 10, "n_queries": 100, "n_target_classes": 2, "restarts": 1}
"""Budgets of the registry attacks against the smoothed classifier (every call costs ``m`` forwards)."""


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
        "denoised_mean_certified_radius_sigma_*", "violation_rate_sigma_*", BUDGET_NOT_MEASURED,
    )  # fmt: skip
    view = CertifiedView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        """Per sigma: the certification (rows and curve), then one task per consistency attack (the
        dear part), so an interrupted run resumes between them and a budget can cut attacks one by one."""
        p = self.params
        if isinstance(p["sigmas"], (str, bytes)) or not isinstance(p["sigmas"], (list, tuple)) or not p["sigmas"]:
            raise InputError(f"certified: sigmas must be a non-empty list of noise levels > 0, got {p['sigmas']!r}")
        for s in p["sigmas"]:  # a finite positive standard deviation of the Gaussian noise
            require_number("certified", p, "sigmas", 0.0, math.inf, open_low=True, open_high=True, value=s)
        # the rest is checked here too, when the audit is planned, not by the library once a task runs
        for key, least in (("num_inputs", 1), ("n0", 1), ("n", 1), ("num_attacked", 0), ("batch_size", 1)):
            require_int("certified", p, key, least)
        require_number("certified", p, "alpha", 0.0, 1.0, open_low=True, open_high=True)
        if isinstance(p["radii"], (str, bytes)) or not isinstance(p["radii"], (list, tuple)) or not p["radii"]:
            raise InputError(f"certified: radii must be a non-empty list of L2 radii >= 0, got {p['radii']!r}")
        for r in p["radii"]:
            require_number("certified", p, "radii", 0.0, math.inf, open_high=True, value=r)
        tasks = []
        for s in p["sigmas"]:
            sigma = float(s)
            tasks.append(Task(f"sigma-{sigma:g}", bind(self._run_sigma, ctx, sigma)))
            if int(p["num_attacked"]) > 0:
                tasks += [
                    Task(f"sigma-{sigma:g}/consistency/{name or 'smoothed-pgd-l2'}",
                         bind(self._consistency_task, ctx, sigma, name))
                    for name in [None, *p["attacks"]]
                ]  # fmt: skip
        return tasks

    def _inputs(self, ctx: AuditContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        data = ctx.hazard(Hazard.clean())
        k = min(int(p["num_inputs"]), len(data))
        if k < 1:
            raise InputError("check 'certified' needs at least one test input (num_inputs >= 1)")
        idx = torch.randperm(len(data), generator=ctx.generator("certified", "inputs"))[:k]
        return data.x[idx], data.y[idx]

    def _smoothed(self, ctx: AuditContext, sigma: float, den: nn.Module | None = None) -> SmoothedClassifier:
        return SmoothedClassifier(ctx.model, ctx.model.num_classes, sigma, den, int(self.params["batch_size"]))

    def _certify(self, ctx: AuditContext, sigma: float, denoised: bool, den: nn.Module | None) -> Certificate:
        """The certificates of the check's inputs at ``sigma`` (seeded: a resumed run recomputes the same
        ones; kept per context so the consistency tasks reuse the certification task's)."""
        memo = _CERTS.setdefault(ctx, {})
        key = (sigma, denoised)
        if key not in memo:
            p = self.params
            x, _ = self._inputs(ctx)
            gen = ctx.generator("certified", sigma, "denoised_" if denoised else "plain")
            smoothed = self._smoothed(ctx, sigma, den)
            if ctx.deadline is None:
                memo[key] = smoothed.certify(x, int(p["n0"]), int(p["n"]), float(p["alpha"]), generator=gen)
            else:  # under --budget: chunks of inputs until the task's deadline (the first chunk always)
                starts = until_deadline(ctx, range(0, len(x), DEADLINE_CHUNK), f"certify/{sigma:g}/{denoised}")
                parts = [smoothed.certify(x[i : i + DEADLINE_CHUNK], int(p["n0"]), int(p["n"]), float(p["alpha"]),
                                          generator=gen) for i in starts]  # fmt: skip
                memo[key] = Certificate(*(torch.cat([getattr(c, f) for c in parts]) for f in _CERT_FIELDS))
        return memo[key]

    def _consistency_task(self, ctx: AuditContext, sigma: float, name: str | None) -> TaskResult:
        p = self.params
        x, _ = self._inputs(ctx)
        cert = self._certify(ctx, sigma, False, None)
        common = {"sigma": sigma, "n0": p["n0"], "n": p["n"], "alpha": p["alpha"]}
        label = name or "smoothed-pgd-l2"
        # not a headline: under --budget it runs only when an attack of it fits before the task's deadline
        for _ in until_deadline(ctx, [name], f"certified/consistency/{label}", first=0):
            return TaskResult(self._consistency(ctx, self._smoothed(ctx, sigma), x, cert, sigma, common, [name]))
        hazard = str(Hazard.adversarial(label, at="certified-radius", norm="l2"))
        return TaskResult([not_measured_row(hazard, f"the consistency attack {label} at sigma {sigma:g}")])

    def _run_sigma(self, ctx: AuditContext, sigma: float) -> TaskResult:
        p = self.params
        x, y = self._inputs(ctx)
        k = len(self._certify(ctx, sigma, False, None).prediction)  # fewer than len(x) when a deadline stopped it
        y = y[:k]
        common = {"sigma": sigma, "n0": p["n0"], "n": p["n"], "alpha": p["alpha"],
                  **stopped_note(k, len(x), "inputs certified")}  # fmt: skip
        rows: list[Row] = []
        curves: dict[str, Certificate] = {}
        variants: list[tuple[bool, nn.Module | None]] = [(False, None)]
        if p["denoised"]:
            den = _denoiser(ctx, sigma)
            if den is not None:
                variants.append((True, den))
        clean = str(Hazard.clean())
        for denoised, den in variants:
            cert = self._certify(ctx, sigma, denoised, den)
            if len(cert.prediction) > k:  # the denoised variant reached more inputs before its deadline
                cert = Certificate(*(getattr(cert, f)[:k] for f in _CERT_FIELDS))
            variant = "denoised_" if denoised else "plain"
            curves["denoised" if denoised else "smoothed"] = cert
            radii = [float(r) for r in p["radii"]]
            s = summarize_certificates(cert, y[: len(cert.prediction)], radii, seed=ctx.seed_for(CHECK, sigma, variant))
            for r, est in s.certified_accuracy:
                hazard = str(Hazard.adversarial("any-l2", r, norm="l2"))
                rows.append(Row.of(hazard, certified_metric("certified_accuracy", sigma, denoised), est, radius=r,
                                   **common))  # fmt: skip
            rows.append(Row.of(clean, certified_metric("abstain_rate", sigma, denoised), s.abstain_rate, **common))
            radius_metric = certified_metric("mean_certified_radius", sigma, denoised)
            rows.append(Row.of(clean, radius_metric, s.mean_certified_radius, **common))
        m = min(len(c.prediction) for c in curves.values())  # the inputs every variant reached before its deadline
        curves = {name: Certificate(*(getattr(c, f)[:m] for f in _CERT_FIELDS)) for name, c in curves.items()}
        caption = (
            f"Certified L2 accuracy against radius, sigma = {sigma:g}, {k} test inputs, n = {p['n']}, "
            f"alpha = {p['alpha']}."
        )
        return TaskResult(rows, [Artifact(f"certified-accuracy-sigma-{sigma:g}".replace(".", "_"),
                                          curve_png(curves, y[:m], sigma), caption=caption)])  # fmt: skip

    def _consistency(
        self,
        ctx: AuditContext,
        smoothed: SmoothedClassifier,
        x: torch.Tensor,
        cert: Certificate,
        sigma: float,
        common: dict[str, object],
        names: list[str | None],
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
            hazard = str(Hazard.adversarial(label, at="certified-radius", norm="l2"))
            metric = certified_metric("violation_rate", sigma)
            rows.append(Row.of(hazard, metric, proportion(result.violated), attack=label, **common))
        return rows
