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
normalised mCE divides by AlexNet's published ImageNet-C errors, constants without an interval: its
interval (the same input bootstrap) covers the audited model's sampling error only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from mlsafety.audit._check import (
    DECISION,
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    Task,
    TaskResult,
    fmt_ci,
    fmt_value,
    register_check,
)
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit._plots import figure, to_png
from mlsafety.core import ArrayDataset, Hazard, InputError, UnknownNameError
from mlsafety.metrics import Estimate, bootstrap_mean, bootstrap_statistic, proportion
from mlsafety.robustness import corruptions as corr

KIND = "corruption"
QUICK_CORRUPTIONS = ["gaussian-noise", "motion-blur", "fog", "contrast", "jpeg-compression"]
"""One corruption of each ImageNet-C group (noise, blur, weather, digital) plus JPEG, for ``--quick``."""


def _names(spec: Any) -> list[str]:
    if spec in ("all", None):
        return corr.available()
    if spec == "imagenet-c":
        return corr.available(extra=False)
    if isinstance(spec, str):
        spec = [spec]
    names = list(dict.fromkeys(spec))
    for n in names:
        corr.CORRUPTIONS.get(n)  # raises UnknownNameError with a suggestion
    return names


def _severities(spec: Any) -> list[int]:
    sevs = [spec] if isinstance(spec, int) else list(spec)
    if not sevs or any(isinstance(s, bool) or s not in corr.SEVERITIES for s in sevs):
        raise InputError(f"corruptions severities must be integers from 1 to 5, got {spec!r}")
    return sorted(set(sevs))


def _corruption(ctx: AuditContext | None, name: str, params: dict[str, Any] | None = None) -> corr.Corruption:
    """The corruption ``name`` with the check's ``reference_size`` and ``table`` (its own or the context's)."""
    if params is None:
        params = ctx.check_params.get("corruptions", {}) if ctx is not None else {}
    ref = params.get("reference_size", Corruptions.defaults["reference_size"])
    table = params.get("table", Corruptions.defaults["table"])
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
    corruption = _corruption(ctx, name)
    c, h, w = _image_shape(ctx)
    reason = corruption.not_applicable((h, w), c, int(sev))
    if reason is not None:
        raise InputError(f"hazard {hazard} is not applicable to these {c}-channel images: {reason}")
    g = ctx.generator(KIND, name, int(sev))
    # corrupt on the model's device (the CPU generator keeps results device-independent), store on the CPU
    x = corruption(test.x.to(ctx.device), int(sev), g).cpu()
    return ArrayDataset(x, test.y, name=f"{test.name}-{name}-{sev}", kind="in", description=f"{name} severity {sev}")


def hazard_name(name: str, severity: int) -> str:
    return f"{KIND}/{name}/{severity}"


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
        "ImageNet-C errors only when baseline is 'alexnet' (ImageNet models); otherwise it is the unnormalised "
        "mean error."
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
    )  # fmt: skip

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self) -> tuple[list[str], list[int]]:
        names = _names(self.params["corruptions"])
        sevs = _severities(self.params["severities"])
        baseline = self.params["baseline"]
        if baseline not in (None, "none", "alexnet") and not isinstance(baseline, dict):
            raise InputError(
                f"corruptions baseline must be None, 'alexnet' or a mapping name -> error, got {baseline!r}"
            )
        ref = self.params["reference_size"]
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float)) or not ref > 0):
            raise InputError(f"corruptions reference_size must be a positive number of pixels or omitted, got {ref!r}")
        table = self.params["table"]
        if table is not None and table not in corr.TABLES:
            raise InputError(
                f"corruptions table must be one of {', '.join(corr.TABLES)} or omitted (by image size), got {table!r}"
            )
        return names, sevs

    def _skipped(self, ctx: AuditContext, names: Sequence[str], sevs: Sequence[int]) -> dict[tuple[str, int], str]:
        """(corruption, severity) -> why it is not applicable to the audited images."""
        c, h, w = _image_shape(ctx)
        out = {}
        for n in names:
            corruption = _corruption(None, n, self.params)
            for s in sevs:
                reason = corruption.not_applicable((h, w), c, s)
                if reason is not None:
                    out[n, s] = reason
        return out

    def hazards(self, ctx: AuditContext) -> list[str]:
        """The applicable hazards (all of them without a context, e.g. to list a profile)."""
        names, sevs = self._plan()
        skipped = self._skipped(ctx, names, sevs) if ctx is not None else {}
        return [hazard_name(n, s) for n in names for s in sevs if (n, s) not in skipped]

    def tasks(self, ctx: AuditContext) -> list[Task]:
        names, sevs = self._plan()
        skipped = self._skipped(ctx, names, sevs)
        tasks = [Task(n, _bind(self._corruption_task, ctx, n, sevs, skipped)) for n in names]
        tasks.append(Task("summary", lambda: self._summary_task(ctx, names, sevs, skipped)))
        return tasks

    # -- work ----------------------------------------------------------------------------------
    def _correct(self, ctx: AuditContext, hazard: str) -> torch.Tensor:
        return (ctx.outputs(hazard).pred == ctx.labels(hazard)).cpu()

    def _corruption_task(
        self, ctx: AuditContext, name: str, sevs: Sequence[int], skipped: dict[tuple[str, int], str]
    ) -> TaskResult:
        rows = []
        wrong = []
        _, h, w = _image_shape(ctx)
        table, ref = _corruption(None, name, self.params).setting(h, w)
        for s in sevs:
            hz = hazard_name(name, s)
            params: dict[str, Any] = {"corruption": name, "severity": s, "table": table, "reference_size": ref}
            if (name, s) in skipped:
                rows.append(Row.exact(hz, "not_applicable", 1.0, DECISION, reason=skipped[name, s], **params))
                continue
            correct = self._correct(ctx, hz)
            wrong.append(~correct)
            rows.append(Row.of(hz, "accuracy", proportion(correct), **params))
            rows.append(Row.of(hz, "corruption_error", proportion(~correct), **params))
        if len(wrong) == len(sevs):  # CE only where every severity applies, so CEs stay comparable
            per_input = torch.stack(wrong, dim=1).double().mean(dim=1)  # each input's error over severities
            seed = ctx.seed_for(self.name, name, "ce")  # derived from (run seed, check, task), never the raw seed
            ce = bootstrap_mean(per_input, n_boot=int(self.params["n_boot"]), seed=seed, name=f"{name}-ce")
            rows.append(Row.of(f"{KIND}/{name}", "ce", ce, severities=list(sevs), normalised=False, table=table,
                               interval="bootstrap over inputs, each with all its severities"))  # fmt: skip
        else:
            why = f"not applicable at severities {[s for s in sevs if (name, s) in skipped]}; left out of CE and mCE"
            rows.append(Row.exact(f"{KIND}/{name}", "ce_not_applicable", 1.0, DECISION, table=table, reason=why))
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
        excluded = sorted({n for n, _ in skipped})
        names = [n for n in all_names if n not in excluded]  # never count a no-op as robustness
        if not names:
            reason = "no selected corruption applies to these images at every selected severity"
            return TaskResult([Row.exact(KIND, "mce_not_applicable", 1.0, DECISION, reason=reason, excluded=excluded)])
        clean = self._correct(ctx, "clean")
        cells = torch.stack([self._correct(ctx, hazard_name(n, s)) for n in names for s in sevs], dim=1)
        c, s = len(names), len(sevs)
        cell_err = (~cells).double().reshape(-1, c, s)
        # every statistic uses errors averaged over severities, so bootstrap (N, 1 + C) per-input values
        wrong = torch.cat([(~clean).double()[:, None], cell_err.mean(dim=2)], dim=1)
        n_boot = int(self.params["n_boot"])
        base = self._baseline(names, sevs)
        info: dict[str, Any] = {"corruptions": list(names), "severities": list(sevs), "normalised": base is not None}
        if excluded:
            info["excluded_not_applicable"] = excluded

        def stat(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], label: str) -> Estimate:
            def statistic(v: torch.Tensor) -> torch.Tensor:
                rates = v.mean(dim=-2)  # (B, 1 + C): clean error, then CE of each corruption
                return fn(rates[:, 0], rates[:, 1:])

            seed = ctx.seed_for(self.name, "summary", label)  # one stream per statistic, from (seed, check, task)
            return bootstrap_statistic(statistic, wrong, n_boot=n_boot, seed=seed, name=f"corruptions-{label}")

        rows = [Row.of(KIND, "mean_accuracy", stat(lambda e0, e: 1 - e.mean(dim=1), "acc"), **info)]
        raw_mce = stat(lambda e0, e: e.mean(dim=1), "mce-raw")
        raw_rel = stat(lambda e0, e: e.mean(dim=1) - e0, "rmce-raw")
        if base is None:
            rows += [Row.of(KIND, "mce", raw_mce, **info), Row.of(KIND, "relative_mce", raw_rel, **info)]
        else:
            table, clean_base = base
            keep = [i for i, n in enumerate(names) if n in table]
            if not keep:
                raise InputError("none of the audited corruptions has a baseline error; audit the ImageNet-C ones")
            ref = torch.tensor([table[names[i]] for i in keep], dtype=torch.float64)
            idx = torch.tensor(keep)
            norm = {**info, "corruptions": [names[i] for i in keep], "baseline_clean_error": clean_base}
            mce = stat(lambda e0, e: (e[:, idx] / ref).mean(dim=1), "mce")
            rel = stat(lambda e0, e: ((e[:, idx] - e0[:, None]) / (ref - clean_base)).mean(dim=1), "rmce")
            raw = {**info, "normalised": False}
            rows += [
                Row.of(KIND, "mce", mce, **norm),
                Row.of(KIND, "relative_mce", rel, **norm),
                Row.of(KIND, "mce_unnormalised", raw_mce, **raw),
                Row.of(KIND, "relative_mce_unnormalised", raw_rel, **raw),
            ]
        acc = 1 - cell_err.mean(dim=0)
        clean_acc = 1 - float(wrong[:, 0].mean())
        png = heat_map_png(acc, list(names), list(sevs), clean_acc)
        _, h, w = _image_shape(ctx)
        first = _corruption(None, names[0], self.params)
        used, scale = first.setting(h, w)[0], first.scale(torch.zeros(1, 1, h, w))
        caption = (
            f"Accuracy under each corruption (rows) and severity (columns); clean accuracy {clean_acc:.3f}. "
            f"Parameters: the published {used} table, its pixel lengths times {scale:.3g} for {h} x {w} px images."
        )
        if excluded:
            caption += f" Not applicable to these images, left out: {', '.join(excluded)}."
        return TaskResult(rows, [Artifact("corruption-heat-map", png, caption=caption)])

    # -- report --------------------------------------------------------------------------------
    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        for r in rows:
            if r.hazard == KIND and r.metric == "mean_accuracy":
                out.append(Headline("Mean accuracy under corruptions", r))
            elif r.hazard == KIND and r.metric == "mce":
                label = "mCE (AlexNet-normalised)" if r.params.get("normalised") else "mCE (mean error)"
                out.append(Headline(label, r, higher_is_better=False))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        cells: dict[str, dict[int, StoredRow | None]] = {}
        ce: dict[str, StoredRow] = {}
        summary = []
        skipped = []
        for r in rows:
            parts = r.hazard.split("/")
            if len(parts) == 3 and r.metric == "accuracy":
                cells.setdefault(parts[1], {})[int(parts[2])] = r
            elif len(parts) == 3 and r.metric == "not_applicable":
                cells.setdefault(parts[1], {})[int(parts[2])] = None
                skipped.append([parts[1], parts[2], str(r.params.get("reason", ""))])
            elif len(parts) == 2 and r.metric == "ce":
                ce[parts[1]] = r
            elif r.hazard == KIND and r.metric != "mce_not_applicable":
                summary.append(
                    [r.metric.replace("_", " "), fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)]
                )
        tables = []
        if cells:
            sevs = sorted({s for by in cells.values() for s in by})
            body = [[name, *[_cell(by, s) for s in sevs], fmt_value(ce[name].value) if name in ce else "n/a"]
                    for name, by in cells.items()]  # fmt: skip
            tables.append(
                Table("Accuracy per corruption and severity", ["corruption", *[f"s{s}" for s in sevs], "CE"], body)
            )
        if ce:
            body = [[name, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)] for name, r in ce.items()]
            tables.append(Table("Corruption error per corruption", ["corruption", "CE", "95% CI", "n"], body))
        if summary:
            tables.append(Table("Corruption summary", ["metric", "value", "95% CI", "n"], summary))
        if skipped:
            tables.append(
                Table(
                    "Not applicable to these images (not run, not counted in CE or mCE)",
                    ["corruption", "severity", "why"],
                    skipped,
                )
            )
        return tables


def _cell(by: dict[int, StoredRow | None], severity: int) -> str:
    if severity not in by:
        return ""
    r = by[severity]
    return "n/a" if r is None else fmt_value(r.value)


def heat_map_png(acc: torch.Tensor, names: list[str], sevs: list[int], clean_acc: float) -> bytes:
    """A heat map of accuracy (corruptions x severities) as PNG bytes."""
    fig = figure(1.6 + 0.55 * len(sevs), 0.9 + 0.28 * len(names))
    ax = fig.add_subplot()
    im = ax.imshow(acc.numpy(), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(sevs)), [str(s) for s in sevs])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("severity")
    ax.set_title(f"accuracy (clean {clean_acc:.3f})", fontsize=9)
    for i in range(len(names)):
        for j in range(len(sevs)):
            ax.text(j, i, f"{float(acc[i, j]):.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return to_png(fig)


def _bind(fn: Callable[..., TaskResult], *args: Any) -> Callable[[], TaskResult]:
    return lambda: fn(*args)
