"""Check ``corruptions``: accuracy under every ImageNet-C corruption and severity, CE, mCE and a heat map.

Hazards ``corruption/<name>/<severity>`` are the test data corrupted with a generator derived from
the run seed and the hazard's name, so any check (the systemic one included) can ask for them in any
order and get the same inputs. Parameters come from the published table nearest to the image size
(CIFAR-10-C, Tiny-ImageNet-C or ImageNet-C; see :mod:`mlsafety.robustness.corruptions.base`).

A corruption that cannot change the audited images at a severity (``saturate`` on one channel, or a
blur below a pixel under an explicit table) is not applicable there: its hazard is not planned (so no
other check counts it either), it gets one ``decision`` row saying why, and it is kept out of CE and
mCE, never counted as robustness. Every other row is an estimate with a 95% interval: accuracy and
error per severity exactly (Clopper-Pearson over the N inputs), CE and the summaries by a bootstrap
over inputs (each input with all its severities: the N x S outcomes share inputs, so they are not
N x S independent trials), from seeds derived from the run seed, the check and the task. A
normalised mCE divides by AlexNet's published ImageNet-C errors (or a baseline's errors the user gives),
constants without an interval: its interval (the same input bootstrap) covers the audited model's sampling
error only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, until_deadline
from mlsafety.audit._check import DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks._common import bind, params_of, require_int, require_names
from mlsafety.audit.views.corruptions import CorruptionsView, heat_map_png
from mlsafety.core import ArrayDataset, Hazard, InputError, UnknownNameError
from mlsafety.robustness import corruptions as corr
from mlsafety.robustness.corruptions.evaluate import estimate_corruption, estimate_mce

KIND = "corruption"
ALL = str(Hazard.corruption())
"""The hazard of the summaries over every corruption (``corruption``)."""
QUICK_CORRUPTIONS = ["gaussian-noise", "motion-blur", "fog", "contrast", "jpeg-compression"]
"""One corruption of each ImageNet-C group (noise, blur, weather, digital) plus JPEG, for ``--quick``."""


def _names(spec: Any) -> list[str]:
    if spec in ("all", None):
        return corr.available()
    if spec == "imagenet-c":
        return corr.available(extra=False)
    spec = require_names(
        "corruptions", {"corruptions": spec}, "corruptions", "['fog', 'contrast'] or 'all'", unique=False
    )
    names = list(dict.fromkeys(spec))
    for n in names:
        corr.CORRUPTIONS.get(n)  # raises UnknownNameError with a suggestion
    return names


LATE = "not measured: its task's deadline (--budget) came first"
"""Why a corruption under a budget is left out of the summary's means (a ``budget_not_measured`` row says so)."""


def _severities(spec: Any) -> list[int]:
    sevs = [spec] if isinstance(spec, int) else list(spec) if isinstance(spec, (list, tuple)) else []
    if not sevs or any(isinstance(s, bool) or s not in corr.SEVERITIES for s in sevs):
        raise InputError(f"corruptions severities must be integers from 1 to 5, got {spec!r}")
    return sorted(set(sevs))


def _corruption(name: str, params: dict[str, Any]) -> corr.Corruption:
    """The corruption ``name`` with the check's ``reference_size`` and ``table``."""
    ref, table = params["reference_size"], params["table"]
    return corr.create(name, reference_size=None if ref is None else float(ref), table=table)


def _image_shape(ctx: AuditContext) -> tuple[int, int, int]:
    """(C, H, W) of the audited test images."""
    c, h, w = (int(v) for v in ctx.data.test.x.shape[1:4])
    return c, h, w


@hazard_provider(KIND)
def _corrupted(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``corruption/<name>/<severity>``: the test data corrupted (deterministic given the run seed)."""
    name, sev = hazard.name, hazard.severity
    if name not in corr.CORRUPTIONS or sev not in corr.SEVERITIES:
        raise UnknownNameError(
            f"unknown hazard {str(hazard)!r}; use corruption/<name>/<severity 1-5> with a name from "
            f"{', '.join(corr.available())}"
        )
    assert name is not None and sev is not None
    test = ctx.data.test
    corruption = _corruption(name, params_of(ctx, Corruptions))
    c, h, w = _image_shape(ctx)
    reason = corruption.not_applicable((h, w), c, int(sev))
    if reason is not None:
        raise InputError(f"hazard {hazard} is not applicable to these {c}-channel images: {reason}")
    g = ctx.generator(KIND, name, int(sev))
    # corrupt on the model's device (the CPU generator keeps results device-independent), store on the CPU
    x = corruption(test.x.to(ctx.device), int(sev), g).cpu()
    return ArrayDataset(x, test.y, name=f"{test.name}-{name}-{sev}", kind="in", description=f"{name} severity {sev}")


@register_check("corruptions")
class Corruptions(Check):
    pillar = "robustness"
    title = "Corruption robustness"
    description = (
        "Top-1 accuracy on the test data under each ImageNet-C corruption (Hendrycks & Dietterich, 2019) at each "
        "severity, computed in torch on the model's device with the published parameter table nearest to the image "
        "size (CIFAR-10-C below 46 px, Tiny-ImageNet-C to 119 px, ImageNet-C above; lengths scaled to the image "
        "size, never shrunk below CIFAR-10-C's), with exact (Clopper-Pearson) 95% intervals; the corruption error "
        "per corruption (CE, the mean error over severities), the mean corruption error (mCE), the relative mCE (CE "
        "minus the clean error) and the mean accuracy over every cell, with seeded bootstrap intervals over test "
        "inputs (each input with all its severities). A corruption that cannot change these images at a severity "
        "is reported as not applicable there and kept out of CE and mCE. mCE is normalised by AlexNet's published "
        "ImageNet-C errors when baseline is 'alexnet' (ImageNet models), by the errors given when baseline maps "
        "corruptions (and clean) to a baseline model's errors; otherwise it is the unnormalised mean error."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "corruptions": "all",
        "severities": [1, 2, 3, 4, 5],
        "reference_size": None,
        "table": None,
        "baseline": None,
        "n_boot": 500,
    }
    quick: ClassVar[dict[str, Any]] = {"corruptions": QUICK_CORRUPTIONS, "severities": [1, 3, 5], "n_boot": 200}
    metrics = (
        "accuracy", "corruption_error", "not_applicable", "ce", "ce_not_applicable", "mean_accuracy", "mce",
        "relative_mce", "mce_unnormalised", "relative_mce_unnormalised", "mce_not_applicable",
        BUDGET_NOT_MEASURED,  # under --budget: a corruption its task's deadline left out
    )  # fmt: skip
    view = CorruptionsView

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self) -> tuple[list[str], list[int]]:
        names = _names(self.params["corruptions"])
        sevs = _severities(self.params["severities"])
        baseline = self.params["baseline"]
        if baseline not in (None, "none", "alexnet") and not isinstance(baseline, dict):
            raise InputError(
                f"corruptions baseline must be None, 'alexnet' or a mapping name -> error, got {baseline!r}"
            )
        if isinstance(baseline, dict):
            self._check_baseline(baseline, names)
        if baseline not in (None, "none") and sevs != list(corr.SEVERITIES):  # refused here, not by the summary
            raise InputError("a normalised mCE (baseline) needs all five severities; set severities to [1, 2, 3, 4, 5]")
        require_int("corruptions", self.params, "n_boot", 1)
        ref = self.params["reference_size"]
        if ref is not None and (
            isinstance(ref, bool) or not isinstance(ref, (int, float)) or not math.isfinite(ref) or not ref > 0
        ):
            raise InputError(f"corruptions reference_size must be a positive number of pixels or omitted, got {ref!r}")
        table = self.params["table"]
        if table is not None and table not in corr.TABLES:
            raise InputError(
                f"corruptions table must be one of {', '.join(corr.TABLES)} or omitted (by image size), got {table!r}"
            )
        return names, sevs

    @staticmethod
    def _check_baseline(baseline: dict[str, Any], names: Sequence[str]) -> None:
        """A baseline's errors: known corruptions, each in (0, 1], and ``clean`` in [0, 1) (as the library takes
        them), each corruption's above the clean error (relative mCE divides by their difference), at least one
        of them audited."""
        for key in baseline:
            if key != "clean" and key not in corr.CORRUPTIONS:
                corr.CORRUPTIONS.get(key)  # an unknown name fails with a suggestion
        errors = {k: v for k, v in baseline.items() if k != "clean"}
        try:  # the library's own test of what it can divide by, before the run is stored
            corr.check_baseline(errors, baseline.get("clean", corr.ALEXNET_CLEAN_ERROR))
        except InputError as exc:
            raise InputError(f"corruptions: {exc}") from None
        if not any(n in baseline for n in names):
            raise InputError(
                f"corruptions baseline has an error for none of the audited corruptions ({', '.join(names)}); "
                "give theirs, or audit the ones it has"
            )

    def _skipped(self, ctx: AuditContext, names: Sequence[str], sevs: Sequence[int]) -> dict[tuple[str, int], str]:
        """(corruption, severity) -> why it is not applicable to the audited images."""
        c, h, w = _image_shape(ctx)
        out = {}
        for n in names:
            corruption = _corruption(n, self.params)
            for s in sevs:
                reason = corruption.not_applicable((h, w), c, s)
                if reason is not None:
                    out[n, s] = reason
        return out

    def hazards(self, ctx: AuditContext) -> list[Hazard]:
        """The applicable hazards (all of them without a context, e.g. to list a profile)."""
        names, sevs = self._plan()
        skipped = self._skipped(ctx, names, sevs) if ctx is not None else {}
        return [Hazard.corruption(n, s) for n in names for s in sevs if (n, s) not in skipped]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        names, sevs = self._plan()
        skipped = self._skipped(ctx, names, sevs)
        tasks = [Task(n, bind(self._corruption_task, ctx, n, sevs, skipped)) for n in names]
        tasks.append(Task("summary", lambda: self._summary_task(ctx, names, sevs, skipped)))
        return tasks

    # -- work ----------------------------------------------------------------------------------
    def _correct(self, ctx: AuditContext, hazard: Hazard) -> torch.Tensor:
        return (ctx.outputs(hazard).pred == ctx.labels(hazard)).cpu()

    def _corruption_task(
        self, ctx: AuditContext, name: str, sevs: Sequence[int], skipped: dict[tuple[str, int], str]
    ) -> TaskResult:
        _, h, w = _image_shape(ctx)
        table, ref = _corruption(name, self.params).setting(h, w)
        if ctx.deadline is not None:  # under --budget: the first corruption always, every other one if it fits
            names, _ = self._plan()
            for _ in until_deadline(ctx, [name], "corruptions/corruption", first=int(name == names[0])):
                return self._corruption_rows(ctx, name, sevs, skipped, table, ref)
            skipped.update({(name, s): LATE for s in sevs})  # the summary leaves it out of the means
            return TaskResult([not_measured_row(str(Hazard.corruption(name)), f"the corruption {name}")])
        return self._corruption_rows(ctx, name, sevs, skipped, table, ref)

    def _corruption_rows(
        self, ctx: AuditContext, name: str, sevs: Sequence[int], skipped: dict[tuple[str, int], str], table: str,
        ref: float,
    ) -> TaskResult:  # fmt: skip
        applies = [s for s in sevs if (name, s) not in skipped]
        correct = {s: self._correct(ctx, Hazard.corruption(name, s)) for s in applies}
        seed = ctx.seed_for(self.name, name, "ce")  # derived from (run seed, check, task), never the raw seed
        # CE only where every severity applies, so CEs stay comparable
        est = estimate_corruption(correct, ce=len(applies) == len(sevs), n_boot=int(self.params["n_boot"]),
                                  seed=seed, name=f"{name}-ce") if correct else None  # fmt: skip
        rows = []
        for s in sevs:
            hz = str(Hazard.corruption(name, s))
            params: dict[str, Any] = {"corruption": name, "severity": s, "table": table, "reference_size": ref}
            if (name, s) in skipped:
                rows.append(Row.exact(hz, "not_applicable", 1.0, DECISION, reason=skipped[name, s], **params))
                continue
            assert est is not None
            rows.append(Row.of(hz, "accuracy", est.accuracy[s], **params))
            rows.append(Row.of(hz, "corruption_error", est.error[s], **params))
        family = str(Hazard.corruption(name))
        if est is not None and est.ce is not None:
            rows.append(Row.of(family, "ce", est.ce, severities=list(sevs), normalised=False, table=table,
                               interval="bootstrap over inputs, each with all its severities"))  # fmt: skip
        else:
            why = f"not applicable at severities {[s for s in sevs if (name, s) in skipped]}; left out of CE and mCE"
            rows.append(Row.exact(family, "ce_not_applicable", 1.0, DECISION, table=table, reason=why))
        return TaskResult(rows)

    def _baseline(self, names: Sequence[str], sevs: Sequence[int]) -> tuple[dict[str, float], float] | None:
        baseline = self.params["baseline"]
        if baseline in (None, "none"):
            return None
        table = corr.ALEXNET_ERRORS if baseline == "alexnet" else dict(baseline)
        clean = (
            corr.ALEXNET_CLEAN_ERROR if baseline == "alexnet" else float(table.pop("clean", corr.ALEXNET_CLEAN_ERROR))
        )
        if list(sevs) != list(corr.SEVERITIES):
            raise InputError("a normalised mCE (baseline) needs all five severities; set severities to [1, 2, 3, 4, 5]")
        return {n: float(table[n]) for n in names if n in table}, clean

    def _summary_task(
        self, ctx: AuditContext, all_names: Sequence[str], sevs: Sequence[int], skipped: dict[tuple[str, int], str]
    ) -> TaskResult:
        late = sorted({n for (n, _), why in skipped.items() if why == LATE})  # under --budget: not measured
        excluded = sorted({n for n, _ in skipped} - set(late))
        names = [n for n in all_names if n not in excluded and n not in late]  # never count a no-op as robustness
        if not names:
            reason = "no selected corruption applies to these images at every selected severity"
            return TaskResult([Row.exact(ALL, "mce_not_applicable", 1.0, DECISION, reason=reason, excluded=excluded)])
        clean = self._correct(ctx, Hazard.clean())
        cells = torch.stack([self._correct(ctx, Hazard.corruption(n, s)) for n in names for s in sevs], dim=1)
        base = self._baseline(names, sevs)
        table, clean_base = base if base is not None else (None, corr.ALEXNET_CLEAN_ERROR)
        est = estimate_mce(
            clean, cells.reshape(-1, len(names), len(sevs)), names, baseline=table, baseline_clean_error=clean_base,
            n_boot=int(self.params["n_boot"]),
            seed=lambda label: ctx.seed_for(self.name, "summary", label),  # one stream per statistic
        )  # fmt: skip
        info: dict[str, Any] = {"corruptions": list(names), "severities": list(sevs), "normalised": base is not None}
        if excluded:
            info["excluded_not_applicable"] = excluded
        if late:
            info["budget_stopped"] = f"{len(names)} of {len(names) + len(late)} corruptions before the deadline"
        rows = [Row.of(ALL, "mean_accuracy", est.mean_accuracy, **info)]
        if base is None:
            rows += [Row.of(ALL, "mce", est.mce, **info), Row.of(ALL, "relative_mce", est.relative_mce, **info)]
        else:
            norm = {**info, "corruptions": list(est.normalised_names), "baseline_clean_error": clean_base,
                    "baseline": "alexnet" if self.params["baseline"] == "alexnet" else "given"}  # fmt: skip
            raw = {**info, "normalised": False}
            rows += [
                Row.of(ALL, "mce", est.mce, **norm),
                Row.of(ALL, "relative_mce", est.relative_mce, **norm),
                Row.of(ALL, "mce_unnormalised", est.mce_unnormalised, **raw),
                Row.of(ALL, "relative_mce_unnormalised", est.relative_mce_unnormalised, **raw),
            ]
        png = heat_map_png(est.accuracy_grid, list(names), list(sevs), est.clean_accuracy)
        _, h, w = _image_shape(ctx)
        first = _corruption(names[0], self.params)
        used, scale = first.setting(h, w)[0], first.scale(torch.zeros(1, 1, h, w))
        caption = (
            f"Accuracy under each corruption (rows) and severity (columns); clean accuracy {est.clean_accuracy:.3f}. "
            f"Parameters: the published {used} table, its pixel lengths times {scale:.3g} for {h} x {w} px images."
        )
        if excluded:
            caption += f" Not applicable to these images, left out: {', '.join(excluded)}."
        return TaskResult(rows, [Artifact("corruption-heat-map", png, caption=caption)])
