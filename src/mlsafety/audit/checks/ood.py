"""Check ``ood``: every OOD detector that can run on the model against every OOD set, with near/far
grouping, and the monitored detector named by the user or chosen on held-out data.

The work is the library's (:class:`mlsafety.monitoring.ood.ScoreCache`, :func:`mlsafety.monitoring.ood.tune`,
:func:`mlsafety.metrics.roc_points`); this module chooses the detectors and the monitored one
(:meth:`OOD.plan`), and turns their scores into rows and plots, including a row per detector it could
not run and why (:func:`skipped`). The report view is :class:`~mlsafety.audit.views.ood.OODView`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mlsafety.audit._budget import until_deadline
from mlsafety.audit._check import COUNT, DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import ScoreCache, bind, metric_name, require_int, truncation_rows
from mlsafety.audit.checks.ood_basic import CONSTRUCTED, constructed_set_rows, detector_rows, ood_hazards
from mlsafety.audit.views.ood import MONITORED, REJECT_METRICS, OODView
from mlsafety.audit.views.ood_basic import FPR_NOTE, detector_metric, histograms_png, roc_png
from mlsafety.core import Hazard, InputError, derive_seed
from mlsafety.metrics import OOD_METRICS, auroc, roc_points
from mlsafety.monitoring import ood
from mlsafety.monitoring.ood.reject import reject_table

TUNE_GRIDS: dict[str, dict[str, list[Any]]] = {
    "react": {"percentile": [80, 85, 90, 95, 99]},
    "ash": {"percentile": [65, 75, 85, 90, 95]},
    "scale": {"percentile": [65, 75, 85, 90, 95]},
    "dice": {"percentile": [50, 70, 90]},
    "knn": {"k": [1, 5, 10, 20, 50]},
    "odin": {"noise": [0.0, 0.0007, 0.0014, 0.0028]},
}
"""Hyper-parameters searched when the check's ``tune`` parameter is on."""


def skipped(ctx: AuditContext) -> dict[str, str]:
    """Registered detectors that cannot run on the audited model, each with why (sorted by name): another
    modality (:func:`mlsafety.monitoring.ood.modalities`: on text, only those fed by the shared forward
    pass run), features without a head whose input could be taken as them, dropout layers the model
    lacks (tag ``needs-dropout``) or several models (``needs-members``), or what the detector itself finds
    missing on one test input (:meth:`~mlsafety.monitoring.ood.Detector.unusable`: e.g. RankFeat on a model
    without a feature map). The full profile leaves out detectors tagged ``opt-in`` (and their reasons)."""
    has_head = traced_head(ctx) is not None
    has_dropout = bool(ood.dropout_layers(ctx.model.module))
    why: dict[str, str] = {}
    for name in ood.available():
        tags = ood.DETECTORS.tags(name)
        if ctx.modality not in ood.modalities(name):
            why[name] = f"works on {'/'.join(sorted(ood.modalities(name)))} models, not {ctx.modality} ones"
        elif ood.NEEDS_MEMBERS in tags:
            why[name] = "needs several trained models (an ensemble); the audit has one"
        elif "features" in ood.DETECTORS.get(name).needs and not has_head:
            why[name] = ("needs the classifier's features, and no head layer was found whose input could be "
                         "taken as them; name it with --head")  # fmt: skip
        elif ood.NEEDS_HEAD_WEIGHTS in tags and not ctx.model.head_is_affine:
            why[name] = (
                "recomputes the logits from the features with the head's weights, but this model's logits "
                f"are not W f + b of its head {ctx.model.head_name!r}'s input (e.g. max pooling after it)"
            )
        elif ood.NEEDS_DROPOUT in tags and not has_dropout:
            why[name] = "needs dropout layers (Monte Carlo dropout); the model has none"
        elif ctx.modality == "image" and len(ctx.data.test):  # e.g. rankfeat on a model without a feature map
            reason = ood.create(name).unusable(ctx.model, ctx.data.test.x[:1])
            if reason is not None:
                why[name] = reason
    return why


def _ordered(names: list[str], first: list[str]) -> list[str]:
    """``names`` with those in ``first`` (the monitored one, the quick set) ahead, each group in its order."""
    ahead = [n for n in dict.fromkeys(first) if n in names]
    return ahead + [n for n in names if n not in ahead]


def traced_head(ctx: AuditContext) -> torch.nn.Module | None:
    """The audited classifier's head, traced on a few test inputs first when no pass has traced it yet
    (the audit's input checks usually have), so a head the pre-trace guess misses is not taken for none."""
    model = ctx.model
    if model.head_info is None and len(ctx.data.test):
        x = ctx.data.test.x[:4]
        model.trace(x.to(ctx.device) if isinstance(x, torch.Tensor) else x)
    return model.head


def applicable(ctx: AuditContext) -> list[str]:
    """Detectors that can run on the audited model, sorted (every registered one not in :func:`skipped`)."""
    out = skipped(ctx)
    return [n for n in ood.available() if n not in out]


def quick_detectors(ctx: AuditContext) -> list[str]:
    """The quick profile's detectors (tag ``quick``) that can run on the audited model, sorted."""
    runnable = set(applicable(ctx))
    return [n for n in ood.DETECTORS.tagged(ood.QUICK) if n in runnable]


def group_hazard(kind: str) -> str:
    """The hazard of an OOD group's pooled sets (``ood-near``, ``ood-far``)."""
    return str(Hazard(f"ood-{kind}"))


AUTO = "auto"
"""The ``default`` parameter's value (and its meaning when unset) that chooses the monitored detector
on held-out data (:meth:`OOD.plan`)."""

MONITOR_RULE = (
    "chosen on held-out data: the detector with the highest mean AUROC over the OOD sets, measured on a seeded "
    "half of each OOD set (the selection half) against {id_side}; every figure of this check is measured on the "
    "other half of each OOD set (the report half) against {report_side}, inputs the choice never saw"
)
"""How the monitored detector is chosen when the user names none (filled in by :meth:`OOD.plan`)."""


@dataclass(frozen=True)
class MonitorPlan:
    """Which detector the ``ood`` check monitors, why, and which inputs its figures are measured on.

    Attributes:
        detector: the monitored detector (its figures are the headlines and the plain metric names).
        rule: how it was chosen, in words (stored with the rows).
        chosen: ``"held-out"`` (chosen on selection halves), ``"named"`` (by the user) or ``"only"``
            (the one detector run).
        report: per hazard (``clean`` and ``ood/<set>``), the indices of the inputs every figure uses;
            a hazard not listed is used whole.
        selection: per detector, its mean AUROC on the selection halves (empty unless ``held-out``).
    """

    detector: str
    rule: str
    chosen: str
    report: dict[str, torch.Tensor] = field(default_factory=dict)
    selection: dict[str, float] = field(default_factory=dict)

    def reported(self, hazard: str, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` of ``hazard`` restricted to the inputs its figures are measured on."""
        index = self.report.get(hazard)
        return scores if index is None else scores[index]


def halves(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``range(n)`` into a selection half (``n // 2`` indices) and a report half
    (the rest), each sorted."""
    perm = torch.randperm(n, generator=g)
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


@register_check("ood")
class OOD(Check):
    pillar = "monitoring"
    modalities = ("image", "text")
    title = "OOD detection"
    description = (
        "Every detector that can run on the model (the report lists any skipped, and why), fitted on "
        "in-distribution data only, scored on the test data against each OOD set (one shared forward pass feeds "
        "all logit and feature detectors). AUROC, AUPR-In, AUPR-Out and FPR@95 (both conventions) with seeded "
        "bootstrap 95% intervals, stored per detector (`<detector>_auroc`); `ood-near`/`ood-far` pool the sets of "
        "each kind (a user's set is far unless given as `--ood near:PATH`). The monitored detector is the one named "
        "with `--ood-detector` (`[params.ood] default`), else the one chosen on held-out data (the selection half "
        "of each OOD set, never in a reported figure); its figures are also stored under the plain names "
        "(`auroc`, ...), which a gate such as `ood/*/auroc` bounds. "
        "Hyper-parameters are the papers' defaults unless tuned on synthetic outliers made from validation data "
        "(never on the OOD test sets unless `tune_on_ood` is set, which the table marks). Every detector is also "
        "scored on rejecting the model's mistakes (`<detector>_aurc`, `_augrc` on the test data) and on the combined "
        "risk per OOD set when a share `ood_share` of the inputs is OOD (`<detector>_combined_risk`). " + FPR_NOTE
    )
    defaults: ClassVar[dict[str, Any]] = {
        "detectors": None,
        "default": AUTO,
        "n_boot": 200,
        "tune": False,
        "tune_on_ood": False,
        "params": {},
        "ood_share": 0.5,
    }
    quick: ClassVar[dict[str, Any]] = {"detectors": "quick", "n_boot": 200}
    # per detector and plain for the monitored one, then the choice, skipped detectors, warnings
    metrics = (
        *OOD_METRICS, *(f"*_{m}" for m in OOD_METRICS), "truncated_inputs", MONITORED, "skipped_*", CONSTRUCTED,
        *(f"*_{m}" for m in REJECT_METRICS),
    )  # fmt: skip
    lower_is_better: ClassVar[frozenset[str]] = frozenset(
        detector_metric(d, m) for d in ood.available() for m in REJECT_METRICS
    )
    """The full profile uses 200 resamples too: with ~20 detectors x (sets + groups) intervals, 500 would
    double the check's time for intervals that move in the third decimal."""
    view = OODView

    def __init__(self, quick: bool = False, **params: Any) -> None:
        super().__init__(quick, **params)
        self._plan: MonitorPlan | None = None

    def names(self, ctx: AuditContext) -> list[str]:
        """The detectors this check runs (validated), with the monitored one among them."""
        chosen = self.params["detectors"]
        if chosen is None:  # detectors tagged opt-in run only when named
            names = [n for n in applicable(ctx) if ood.OPT_IN not in ood.DETECTORS.tags(n)]
        elif chosen == "quick":
            names = quick_detectors(ctx)
        elif not isinstance(chosen, (list, tuple)) or not all(isinstance(n, str) for n in chosen):
            raise InputError(f"the ood check's detectors must be a list of names, 'quick' or none, not {chosen!r}")
        else:
            names = list(chosen)
        for n in names:
            ood.DETECTORS.get(n)  # unknown names raise with a suggestion
        if isinstance(chosen, list):  # the user's own list: a detector that cannot run is refused, not skipped
            why_not = skipped(ctx)
            for n in names:  # (another modality's detector is refused below with its own message)
                if n in why_not and ctx.modality in ood.modalities(n):
                    raise InputError(f"[params.ood] detectors: {n!r} cannot run on this model: {why_not[n]}; "
                                     "remove it from the list (`mlsafety ood list`)")  # fmt: skip
        default = self.params["default"]
        if default is None or default == AUTO:
            if not names:
                raise InputError("the ood check has no detector to run on this model; name some in [params.ood] "
                                 "detectors (`mlsafety ood list`)")  # fmt: skip
            return names
        if not isinstance(default, str):
            raise InputError(f"the ood check's monitored detector must be a detector name or {AUTO!r}, not {default!r}")
        ood.DETECTORS.get(default)  # an unknown name fails with a suggestion
        if default in names:
            return names
        why = skipped(ctx).get(default)
        if why is not None:
            raise InputError(f"--ood-detector {default}: the detector {why}; choose another (`mlsafety ood list`) "
                             f"or {AUTO!r}")  # fmt: skip
        if chosen in (None, "quick"):  # the user's monitor joins the profile's detectors
            return sorted([*names, default])
        raise InputError(f"the ood check's default detector {default!r} is not among its detectors {names}; "
                         "add it to [params.ood] detectors")  # fmt: skip

    def skipped(self, ctx: AuditContext) -> dict[str, str]:
        """The detectors of this check's profile that cannot run on the model, with why (none when the
        user listed the detectors: an unusable one among them is refused instead)."""
        chosen = self.params["detectors"]
        if chosen is None:
            return {n: why for n, why in skipped(ctx).items() if ood.OPT_IN not in ood.DETECTORS.tags(n)}
        if chosen == "quick":
            return {n: why for n, why in skipped(ctx).items() if n in ood.DETECTORS.tagged(ood.QUICK)}
        return {}

    def hazards(self, ctx: AuditContext) -> list[str]:
        return ood_hazards(ctx)

    def _run_params(self, names: list[str]) -> dict[str, Any]:
        """The ``params`` of the detectors ``names`` that run. Under a profile (``detectors`` none or
        ``'quick'``), the parameters of a detector it leaves out for this model or for ``--quick`` are checked
        and set aside, so one configuration serves every model and both profiles; any other stray name (a
        typo, an opt-in detector not listed) is left for :class:`ScoreCache` to refuse."""
        params = self.params["params"]
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise InputError(
                f"ood: params must map detector names to their parameters, e.g. {{knn = {{k = 50}}}}, got {params!r}"
            )
        if self.params["detectors"] not in (None, "quick"):
            return params
        out = {}
        for name, value in params.items():
            if name in names or name not in ood.DETECTORS or ood.OPT_IN in ood.DETECTORS.tags(name):
                out[name] = value
            else:
                ood.DETECTORS.create(name, **dict(value))  # its values are still checked
        return out

    def tasks(self, ctx: AuditContext) -> list[Task]:
        hazards = self.hazards(ctx)
        if not hazards:
            return []
        share = self.params["ood_share"]  # checked when the audit is planned, before any row is stored
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise InputError(f"the ood check's ood_share must be a number in [0, 1], not {share!r}")
        require_int("ood", self.params, "n_boot", 1)
        for key in ("tune", "tune_on_ood"):  # 'no' would read as on by Python's truth
            if not isinstance(self.params[key], bool):
                raise InputError(f"the ood check's {key} must be true or false, not {self.params[key]!r}")
        tune = self.params["tune"] or self.params["tune_on_ood"]
        if tune and ctx.modality != "image":
            raise InputError(f"the ood check's tune and tune_on_ood need image inputs (synthetic outliers "
                             f"made of pixels); turn them off for a {ctx.modality} model")  # fmt: skip
        if tune and ctx.data.train is None:  # refused here, not by ood.tune inside the task after the run is stored
            raise InputError("the ood check's tune and tune_on_ood choose hyper-parameters on validation inputs the "
                             "detectors were not fitted on, and without training data they are fitted on the "
                             "validation data: give training data (--train), or turn tuning off")  # fmt: skip
        names = self.names(ctx)
        cache = ScoreCache(ctx, names, self._run_params(names))
        if self.params["default"] in (None, AUTO) and len(cache.names) > 1:
            self._check_splittable(ctx)  # when the audit is planned, not in a task
        if tune:
            cache.prepare = lambda: self._tune(ctx, cache)
        tasks = [Task("detectors", bind(self._detectors, ctx, cache))]
        tasks += [Task(h, bind(self._task, ctx, cache, h)) for h in hazards]
        kinds = sorted({self._kind(ctx, h) for h in hazards})
        tasks += [Task(f"group/{k}", bind(self._group, ctx, cache, k)) for k in kinds]
        tasks.append(Task("reject", bind(self._reject, ctx, cache)))
        tasks.append(Task("plots", bind(self._plots, ctx, cache)))
        return tasks

    # -- the monitored detector ----------------------------------------------------------------
    def plan(self, ctx: AuditContext, cache: ScoreCache) -> MonitorPlan:
        """The monitored detector and the inputs every figure is measured on (computed once).

        Named by the user (``default``), or the only detector run: every input is reported. Else
        (``default`` is ``"auto"``) it is chosen on held-out data, so no reported figure saw the choice:
        each OOD set is split by a seeded generator (named after the check, ``monitor-split`` and the
        set) into a selection half and a report half. The in-distribution side of the choice is the
        validation data when the detectors are fitted on training data (the validation data then
        takes no other part in this check, but for fitting the one temperature of temperature-msp, whose
        method fits it on held-out data), else a seeded half of the test data (the detectors are
        fitted on the validation data, whose scores would flatter the detectors that memorise it, such
        as KNN). The detector with the highest mean AUROC over the sets' selection halves is chosen
        (ties: the first in name order). Choosing on the same inputs that are reported would bias the
        monitored detector's figures upwards (the maximum of noisy estimates); the report half's figures
        carry no such bias, at about 1.4 times the interval width of the whole set.

        Raises:
            InputError: an OOD set or the test data too small to split (fewer than 2 inputs; :meth:`tasks`
                refuses it first, when the audit is planned).
        """
        if self._plan is not None:
            return self._plan
        names = cache.names
        default = self.params["default"]
        if default is not None and default != AUTO:
            self._plan = MonitorPlan(default, "named by the user (--ood-detector, or default in [params.ood])", "named")
            return self._plan
        if len(names) == 1:
            self._plan = MonitorPlan(names[0], "the only detector run", "only")
            return self._plan
        self._check_splittable(ctx)
        report: dict[str, torch.Tensor] = {}
        select: dict[str, torch.Tensor] = {}
        for h in self.hazards(ctx):
            select[h], report[h] = halves(len(ctx.hazard(h)), ctx.generator(self.name, "monitor-split", h))
        val, clean = ctx.data.val, str(Hazard.clean())
        if ctx.data.train is not None and len(val) >= 2:
            sid = cache.scores(_VAL_KEY, x=val.x, outputs=ctx.outputs_for(val))
            held = [n for n, d in zip(names, cache.detectors, strict=True) if cache.fits_held_out(d)]
            also = f", {', '.join(held)} on the validation data, as its method asks" if held else ""
            id_side = f"the validation data ({len(val)} inputs; the detectors are fitted on the training data{also})"
            report_side = "the whole test data"
        else:
            sel, report[clean] = halves(len(ctx.data.test), ctx.generator(self.name, "monitor-split", clean))
            sid = {k: v[sel] for k, v in cache.scores(clean).items()}
            id_side = "a seeded half of the test data (the detectors are fitted on the validation data)"
            report_side = "the other half of the test data"
        mean = {
            d: sum(float(auroc(sid[d], cache.scores(h)[d][idx])) for h, idx in select.items()) / len(select)
            for d in names
        }
        best = max(names, key=lambda d: mean[d])  # the first of equal ones
        rule = MONITOR_RULE.format(id_side=id_side, report_side=report_side)
        self._plan = MonitorPlan(best, rule, "held-out", report, mean)
        return self._plan

    def _check_splittable(self, ctx: AuditContext) -> None:
        """Refuse sets too small to split into a selection and a report half (fewer than 2 inputs)."""
        sizes = {f"OOD set {Hazard.parse(h).name!r}": len(ctx.hazard(h)) for h in self.hazards(ctx)}
        sizes["the test data"] = len(ctx.data.test)
        for what, n in sizes.items():
            if n < 2:
                raise InputError(f"{what} has {n} input; the ood check needs at least 2 to choose its monitored "
                                 "detector on held-out data: give more, or name one with --ood-detector")  # fmt: skip

    def _detectors(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        """The monitored detector (a count row: how many it was chosen among) and every skipped detector."""
        late: dict[str, str] = {}
        if ctx.deadline is not None and len(cache.names) > 1:  # under --budget: the detectors fitted by the deadline
            first = [n for n in cache.names if n == self.params["default"]] + quick_detectors(ctx)
            dropped = cache.fit_until(lambda names: until_deadline(ctx, _ordered(names, first), "ood/detector"),
                                      str(Hazard.clean()))  # fmt: skip
            late = {n: "not fitted before the task's deadline (--budget); run without --budget for it" for n in dropped}
        plan = self.plan(ctx, cache)
        where = str(Hazard("ood"))
        selection = {d: round(v, 4) for d, v in sorted(plan.selection.items(), key=lambda kv: -kv[1])}
        rows = [Row.exact(where, MONITORED, float(len(cache.names)), COUNT, len(cache.names), detector=plan.detector,
                          chosen=plan.chosen, rule=plan.rule, selection_auroc=selection)]  # fmt: skip
        for name, why in (self.skipped(ctx) | late).items():
            rows.append(Row.exact(where, metric_name("skipped", name), 1.0, DECISION, detector=name, reason=why))
        return TaskResult(rows)

    # -- work ----------------------------------------------------------------------------------
    @staticmethod
    def _kind(ctx: AuditContext, hazard: str) -> str:
        """``near`` or ``far``: the kind of the OOD set behind ``hazard``."""
        return ctx.hazard(hazard).kind

    def _task(self, ctx: AuditContext, cache: ScoreCache, hazard: str) -> TaskResult:
        plan = self.plan(ctx, cache)
        clean = str(Hazard.clean())
        sid, sout = cache.scores(clean), cache.scores(hazard)
        kind = self._kind(ctx, hazard)
        rows: list[Row] = []
        for name in cache.names:
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, plan.reported(clean, sid[name]), plan.reported(hazard, sout[name]),
                self.params["n_boot"], seed, plain=name == plan.detector, monitored=plan.chosen, kind=kind,
                **_inputs(plan), **cache.info[name],
            )  # fmt: skip
        return TaskResult(rows + truncation_rows(ctx, hazard) + constructed_set_rows(ctx, hazard))

    def _group(self, ctx: AuditContext, cache: ScoreCache, kind: str) -> TaskResult:
        plan = self.plan(ctx, cache)
        clean = str(Hazard.clean())
        sets = [h for h in self.hazards(ctx) if self._kind(ctx, h) == kind]
        sid = cache.scores(clean)
        hazard = group_hazard(kind)
        rows: list[Row] = []
        for name in cache.names:
            pooled = torch.cat([plan.reported(h, cache.scores(h)[name]) for h in sets])
            seed = derive_seed(ctx.seed, self.name, hazard, name)
            rows += detector_rows(
                hazard, name, plan.reported(clean, sid[name]), pooled, self.params["n_boot"], seed,
                plain=name == plan.detector, monitored=plan.chosen, sets=[Hazard.parse(h).name for h in sets],
                **_inputs(plan), **cache.info[name],
            )  # fmt: skip
        return TaskResult(rows)

    def _reject(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        """Learning to reject meets OOD detection (:func:`mlsafety.monitoring.ood.reject_table`): per detector,
        the AURC and AUGRC of rejecting the model's mistakes on the test data (``clean``) and, per OOD set, the
        combined risk when a share ``ood_share`` of the arriving inputs is OOD (threshold flagging 5% of the
        correct answers), on the same inputs as every other figure. Nothing without labelled test data."""
        share = self.params["ood_share"]
        test = ctx.data.test
        if test.y is None or len(test) == 0 or bool((test.y < 0).any()):
            return TaskResult([])
        plan = self.plan(ctx, cache)
        clean = str(Hazard.clean())
        correct = plan.reported(clean, ctx.outputs(clean).pred.cpu() == test.y.cpu())
        sid = {n: plan.reported(clean, s) for n, s in cache.scores(clean).items()}
        out = {h: {n: plan.reported(h, s) for n, s in cache.scores(h).items()} for h in self.hazards(ctx)}
        table = reject_table(sid, correct, out, float(share), n_boot=self.params["n_boot"],
                             seed=derive_seed(ctx.seed, self.name, "reject"))  # fmt: skip
        rule = {"ood_share": float(share), "false_alarm_rate": table.false_alarm_rate, **_inputs(plan)}
        rows: list[Row] = []
        for r in table.rows:
            info = {"detector": r.detector, **cache.info[r.detector], **rule}
            rows += [Row.of(clean, detector_metric(r.detector, "aurc"), r.aurc, **info),
                     Row.of(clean, detector_metric(r.detector, "augrc"), r.augrc, **info)]  # fmt: skip
            rows += [Row.of(h, detector_metric(r.detector, "combined_risk"), cells["combined_risk"], **info)
                     for h, cells in r.ood.items()]  # fmt: skip
        return TaskResult(rows)

    def _plots(self, ctx: AuditContext, cache: ScoreCache) -> TaskResult:
        plan = self.plan(ctx, cache)
        clean = str(Hazard.clean())
        sid = {n: plan.reported(clean, s) for n, s in cache.scores(clean).items()}
        sets = {h: Hazard.parse(h).name or h for h in self.hazards(ctx)}
        out = {h: {n: plan.reported(h, s) for n, s in cache.scores(h).items()} for h in sets}
        mean_auroc = {n: sum(float(auroc(sid[n], out[h][n])) for h in sets) / len(sets) for n in cache.names}
        best = max(cache.names, key=lambda n: mean_auroc[n])
        monitored = plan.detector
        shown = list(dict.fromkeys([best, monitored]))
        role = {n: "best" if n == best else "monitored" for n in shown}
        if best == monitored:
            role[best] = "best, monitored"
        rocs = {
            f"test data vs {s}": {
                f"{n} ({role[n]}), AUROC {float(auroc(sid[n], out[h][n])):.3f}": roc_points(sid[n], out[h][n])
                for n in shown
            }
            for h, s in sets.items()
        }
        hists = {f"{n} ({role[n]})": (sid[n], {s: out[h][n] for h, s in sets.items()}) for n in shown}
        where = " (report halves)" if plan.report else ""
        return TaskResult(
            [],
            [
                Artifact("roc", roc_png(rocs), caption=f"ROC curves of the best detector ({best}) and the monitored "
                         f"one ({monitored}) on each OOD set{where} (mean AUROC {mean_auroc[best]:.3f} vs "
                         f"{mean_auroc[monitored]:.3f})."),
                Artifact("histograms", histograms_png(hists),
                         caption=f"Anomaly scores of the best and the monitored detector: test data vs each OOD "
                                 f"set{where}."),
            ],
        )  # fmt: skip

    def _tune(self, ctx: AuditContext, cache: ScoreCache) -> None:
        on_ood = bool(self.params["tune_on_ood"])
        val = ctx.data.val
        g = ctx.generator(self.name, "tune")
        ood_x = torch.cat([d.x for d in ctx.data.ood.values()]) if on_ood else None
        for name in cache.names:
            grid = TUNE_GRIDS.get(name)
            if grid is None or name in self.params["params"]:
                continue
            tuned = ood.tune(name, grid, ctx.model, ctx.data.fit, val.x, g, ood_data=ood_x, use_ood_data=on_ood)
            cache.replace(name, tuned.detector, tuned_on=tuned.tuned_on, **tuned.params)


_VAL_KEY = "#validation"
"""The score cache's key of the validation data's scores (not a hazard)."""


def _inputs(plan: MonitorPlan) -> dict[str, str]:
    """The row param that says a figure is measured on the report halves (none when on whole sets)."""
    return {"inputs": "report half"} if plan.report else {}
