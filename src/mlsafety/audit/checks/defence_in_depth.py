"""Check ``defence-in-depth``: under every hazard of the audit, how often the model fails *and* the
monitor lets the failure through, an FMEA table computed from those measurements, and the
Swiss-cheese plot.

Nothing is recomputed: the check reads every hazard's inputs and forward outputs from the context
(``ctx.hazard``, ``ctx.outputs``), the ones other enabled checks declared (``ctx.planned_hazards``)
plus ``clean`` and every OOD set. The monitor is chosen on validation data only (clean validation
inputs and synthetic outliers made from them), never on the test hazards.

Configuration (``mlsafety audit --config ci.toml``), e.g. for a CI pipeline::

    [params.defence-in-depth]
    monitors = ["energy", "mahalanobis", "knn"]      # candidates, alone and with the confidence part
    false_alarm_rate = 0.05                          # on correct answers of clean validation data
    severity = { adversarial = 9, "ood/letters" = 6 } # by kind, hazard-name prefix or full name
    exposure = { clean = 0.97, "ood/letters" = 0.02, "corruption/fog/3" = 0.01 }

    [fail_over]                                      # exit 1 when a stored metric is above its bound
    "defence-in-depth/clean/escaped_failure_rate" = 0.01
    "defence-in-depth/*/adaptive_escaped_failure_rate" = 0.5  # needs the adversarial check
    "defence-in-depth/deployment/expected_escaped_failure_rate" = 0.02
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mlsafety.audit._check import (
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
from mlsafety.audit._context import AuditContext
from mlsafety.core import InputError, Outputs, forward
from mlsafety.metrics import Estimate
from mlsafety.monitoring import ood
from mlsafety.systemic import (
    Monitor,
    MonitorAwareObjective,
    Outcome,
    ScoredSet,
    candidate_monitors,
    choose_monitor,
    expected_escaped_rate,
    failures,
    fmea_table,
    severity_for,
    swiss_cheese_png,
    synthetic_outliers,
)

DEFAULT_MONITORS = ["energy", "max-logit", "mahalanobis", "knn", "vim"]
"""Detectors tried as monitors by default (alone and combined with the model's confidence); for a
model without an ``nn.Linear`` head, only those that need no features."""

ADVERSARIAL = "adversarial"
CORRUPTION = "corruption"
LOWER_IS_BETTER = frozenset({
    "failure_rate", "escaped_failure_rate", "adaptive_escaped_failure_rate", "false_alarm_rate",
    "expected_escaped_failure_rate", "severity", "occurrence", "detection", "rpn", "validation_escape",
})  # fmt: skip
"""Metrics of this check where a smaller number is safer (``caught_share`` is the one that is not)."""
PLOT_MAX_BARS = 30
"""Above this many hazards the Swiss-cheese plot pools each corruption's severities into one bar."""


@dataclass
class _State:
    """What the tasks share, computed lazily: fitted detectors, the chosen monitor, outcomes per hazard."""

    ctx: AuditContext
    names: list[str]
    params: dict[str, Any]
    detectors: list[ood.Detector] | None = None
    monitor: Monitor | None = None
    criteria: dict[str, Estimate] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    adaptive: dict[str, Outcome] = field(default_factory=dict)
    adaptive_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    differentiable: ood.Detector | None = None  # the monitor's detector, refitted for autograd


@register_check("defence-in-depth")
class DefenceInDepth(Check):
    pillar = "systemic"
    title = "Defence in depth"
    description = (
        "For every hazard of the audit, each input is served correctly, a false alarm, a failure caught by the "
        "monitor, or an escaped failure (wrong answer, not flagged; for OOD inputs every accepted answer is a "
        "failure). The monitor is a detector score and/or the model's confidence with thresholds set on the correct "
        "answers of clean validation data at the configured false-alarm rate, chosen among the candidates on "
        "validation data only (clean validation inputs and synthetic outliers made from them). For adversarial "
        "hazards the monitor-aware attack (PGD with a selective loss that fools the model and stays under the "
        "thresholds) is also run; its row is the per-input worst case of both attacks. Rates carry exact "
        "(Clopper-Pearson) 95% intervals. FMEA: severity from the configuration (defaults per hazard kind; a "
        "setting), occurrence from the failure rate and detection from the share of failures missed, by the bands "
        "documented in mlsafety.systemic, each with the band range its proportion's exact 95% interval spans; "
        "RPN = S x O x D, its range the product at the ends of 97.5% ranges (both hold together at 95%)."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "monitors": DEFAULT_MONITORS,
        "false_alarm_rate": 0.05,
        "confidence_share": 0.5,
        "severity": {},
        "exposure": {},
        "adaptive": True,
        "adaptive_steps": 20,
    }
    quick: ClassVar[dict[str, Any]] = {"adaptive_steps": 10}
    metrics = (
        "failure_rate", "caught_share", "escaped_failure_rate", "false_alarm_rate", "adaptive_escaped_failure_rate",
        "expected_escaped_failure_rate", "validation_escape", "severity", "occurrence", "detection", "rpn",
    )  # fmt: skip
    lower_is_better: ClassVar[frozenset[str]] = LOWER_IS_BETTER

    # -- plan ----------------------------------------------------------------------------------
    def consumed(self, ctx: AuditContext) -> list[str]:
        """The hazards measured: ``clean``, every planned hazard, every OOD set (in that order)."""
        return list(
            dict.fromkeys(["clean", *(str(h) for h in ctx.planned_hazards), *(f"ood/{n}" for n in ctx.data.ood)])
        )

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params
        for key, top in (("false_alarm_rate", "1)"), ("confidence_share", "1]")):
            v = p[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
            if not ok or (top == "1)" and v == 1.0):
                raise InputError(f"defence-in-depth {key} must be a number in [0, {top}, got {v!r}")
        for key in ("severity", "exposure"):
            if not isinstance(p[key], dict):
                raise InputError(f"defence-in-depth {key} must map hazard names (or kinds) to numbers, got {p[key]!r}")
        spec = p["monitors"]
        names = [spec] if isinstance(spec, str) else list(spec)
        if ctx.model.head is None and names == DEFAULT_MONITORS:  # no features to read: logit detectors only
            names = [n for n in names if "features" not in ood.DETECTORS.get(n).needs]
        for n in names:
            if not ood.DETECTORS.get(n).needs <= ood.SHARED_NEEDS:
                raise InputError(
                    f"monitor detector {n!r} needs {sorted(ood.DETECTORS.get(n).needs - ood.SHARED_NEEDS)}; "
                    "defence-in-depth uses detectors fed by the shared forward pass (logits, features)"
                )
        for h in self.consumed(ctx):
            severity_for(h, self.params["severity"])  # validates the overrides before any work
        state = _State(ctx, names, self.params)
        hazards = self.consumed(ctx)
        tasks = [Task("monitor", lambda: self._monitor_task(state))]
        tasks += [Task(h, _bind(self._hazard_task, state, h)) for h in hazards]
        tasks.append(Task("summary", lambda: self._summary_task(state, hazards)))
        return tasks

    # -- the monitor ---------------------------------------------------------------------------
    def _detectors(self, state: _State) -> list[ood.Detector]:
        """Every candidate detector, fitted once on the fit data from the shared forward pass."""
        if state.detectors is None:
            ctx = state.ctx
            fit = ctx.data.fit
            dets = [ood.create(n) for n in state.names]
            ood.fit_detectors(dets, ctx.model, fit, ctx.batch_size, outputs=ctx.outputs_for(fit), labels=fit.y)
            state.detectors = dets
        return state.detectors

    def _scored(self, state: _State, outputs: Outputs, labels: torch.Tensor, x: torch.Tensor) -> ScoredSet:
        dets = self._detectors(state)
        scores = ood.score_detectors(dets, state.ctx.model, x, state.ctx.batch_size, outputs=outputs)
        by_name = {n: s.cpu() for n, s in zip(state.names, scores.values())}
        return ScoredSet(failures(outputs.logits, labels).cpu(), outputs.probs.amax(dim=1).cpu(), by_name)

    def _choose(self, state: _State) -> Monitor:
        if state.monitor is None:
            ctx = state.ctx
            val = ctx.data.val
            val_set = self._scored(state, ctx.outputs_for(val), val.y, val.x)
            outliers = synthetic_outliers(val, ctx.generator(self.name, "outliers"))
            out_set = self._scored(state, forward(ctx.model, outliers.x, ctx.batch_size), outliers.y, outliers.x)
            cands = candidate_monitors(
                val_set, state.names, float(self.params["false_alarm_rate"]), float(self.params["confidence_share"])
            )
            state.monitor, state.criteria = choose_monitor(cands, val_set, out_set)
        return state.monitor

    def _monitor_task(self, state: _State) -> TaskResult:
        chosen = self._choose(state)
        rows = [
            Row.of(f"validation/{name}", "validation_escape", est, selected=name == chosen.name)
            for name, est in state.criteria.items()
        ]
        return TaskResult(rows)

    # -- hazards -------------------------------------------------------------------------------
    def _outcome(self, state: _State, hazard: str) -> Outcome:
        if hazard not in state.outcomes:
            ctx = state.ctx
            out = ctx.outputs(hazard)
            flags = self._flags(state, ctx.hazard(hazard).x, out)
            state.outcomes[hazard] = Outcome(failures(out.logits, ctx.labels(hazard)).cpu(), flags)
        return state.outcomes[hazard]

    def _flags(self, state: _State, x: torch.Tensor, out: Outputs) -> torch.Tensor:
        """The chosen monitor's flags for inputs ``x`` with forward outputs ``out`` (only its detector runs)."""
        ctx = state.ctx
        mon = self._choose(state)
        scores = None
        if mon.detector is not None:
            det = self._detectors(state)[state.names.index(mon.detector)]
            scores = next(iter(ood.score_detectors([det], ctx.model, x, ctx.batch_size, outputs=out).values())).cpu()
        return mon.flags(scores, out.probs.amax(dim=1).cpu())

    def _adaptive(self, state: _State, hazard: str) -> Outcome | None:
        """Worst case per input of the hazard's own attack and the monitor-aware attack."""
        if not self.params["adaptive"] or hazard.split("/")[0] != ADVERSARIAL:
            return None
        if hazard not in state.adaptive:
            source = _attack_source(state.ctx, hazard)
            if source is None:
                state.adaptive_info[hazard] = {
                    "adaptive": "not run: the clean source of each input or the eps-ball could not be identified"
                }
                return None
            x, y, eps, norm = source
            adv = self._attack(state, hazard, x, y, eps, norm)
            ctx = state.ctx
            mon = self._choose(state)
            out = forward(ctx.model, adv, ctx.batch_size)
            adaptive = Outcome(failures(out.logits, y).cpu(), self._flags(state, adv, out))
            state.adaptive[hazard] = self._outcome(state, hazard).worst_case(adaptive)
            state.adaptive_info[hazard] = {
                "attack": "pgd", "loss": "monitor-aware (selective)", "steps": int(self.params["adaptive_steps"]),
                "eps": eps, "norm": norm, "monitor": mon.name,
                "adaptive_only_escaped_failure_rate": adaptive.escaped_failure_rate().value,
                "combined": "per-input worst case of the hazard's attack and the monitor-aware attack",
            }  # fmt: skip
        return state.adaptive[hazard]

    def _attack(
        self, state: _State, hazard: str, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str
    ) -> torch.Tensor:
        from mlsafety.robustness.attacks import PGD

        ctx = state.ctx
        mon = self._choose(state)
        score_fn = None
        needs_features = False
        if mon.detector is not None:
            if state.differentiable is None:
                state.differentiable = _differentiable_copy(ctx, mon.detector)
            det = state.differentiable
            needs_features = "features" in det.needs

            def score_fn(outputs: Outputs) -> torch.Tensor:
                # the detector's own scoring, without the detach of score_outputs (gradients flow)
                return det._score(ctx.model, outputs)

        obj = MonitorAwareObjective(ctx.model, mon, score_fn, needs_features)
        steps = int(self.params["adaptive_steps"])
        attack = PGD(eps=eps, norm=norm, steps=steps, loss=obj.loss, success=obj.success)
        # one generator derived from (run seed, check, task): random starts and targets of this hazard's attack
        return attack(ctx.model, x, y, generator=ctx.generator(self.name, "adaptive", hazard))

    def _hazard_task(self, state: _State, hazard: str) -> TaskResult:
        o = self._outcome(state, hazard)
        mon = self._choose(state)
        info = mon.describe()
        adaptive = self._adaptive(state, hazard)
        if adaptive is None and hazard in state.adaptive_info:
            info.update(state.adaptive_info[hazard])
        rows = [Row.of(hazard, "failure_rate", o.failure_rate(), **info)]
        caught = o.caught_share()
        if caught is not None:
            rows.append(Row.of(hazard, "caught_share", caught, **info))
        rows.append(Row.of(hazard, "escaped_failure_rate", o.escaped_failure_rate(), **info))
        alarms = o.false_alarm_rate()
        if alarms is not None:
            rows.append(Row.of(hazard, "false_alarm_rate", alarms, **info))
        if adaptive is not None:
            rows.append(
                Row.of(hazard, "adaptive_escaped_failure_rate", adaptive.escaped_failure_rate(),
                       **state.adaptive_info[hazard])
            )  # fmt: skip
        return TaskResult(rows)

    # -- summary -------------------------------------------------------------------------------
    def _summary_task(self, state: _State, hazards: Sequence[str]) -> TaskResult:
        outcomes = {h: self._outcome(state, h) for h in hazards}
        adaptive = {h: a for h in hazards if (a := self._adaptive(state, h)) is not None}
        # FMEA of adversarial hazards uses the worst case the adaptive attacker reaches
        measured = {h: adaptive.get(h, o) for h, o in outcomes.items()}
        rows: list[Row] = []
        for e in fmea_table(measured, self.params["severity"]):
            raw = {
                "failure_rate": e.failure_rate.value,
                "failure_rate_ci": [e.failure_rate.ci_low, e.failure_rate.ci_high],
                "miss_share": None if e.miss_share is None else e.miss_share.value,
                "miss_share_ci": None if e.miss_share is None else [e.miss_share.ci_low, e.miss_share.ci_high],
                "n": e.failure_rate.n,
                "adaptive": e.hazard in adaptive,
            }
            n = e.failure_rate.n
            rows += [
                Row(e.hazard, "severity", e.severity, params=raw, kind="setting"),  # configured, not measured
                Row(e.hazard, "occurrence", e.occurrence, *e.occurrence_range, n, raw),
                Row(e.hazard, "detection", e.detection, *e.detection_range, n, raw),
                Row(e.hazard, "rpn", e.rpn, *e.rpn_range, n, {**raw, "interval": "S x O x D at 97.5% ranges"}),
            ]
        exposure = dict(self.params["exposure"])
        if exposure:
            est = expected_escaped_rate(measured, exposure)
            rows.append(Row.of("deployment", "expected_escaped_failure_rate", est, exposure=exposure))
        mon = self._choose(state)
        shown, shown_adaptive = _for_plot(outcomes, adaptive)
        png = swiss_cheese_png(shown, shown_adaptive, title=f"Defence in depth (monitor: {mon.name})")
        caption = (
            "Per hazard: inputs answered correctly (green), failures caught by the monitor (amber) and escaped "
            "failures (red); a black tick marks the escaped share under the monitor-aware attack."
        )
        return TaskResult(rows, [Artifact("swiss-cheese", png, caption=caption)])

    # -- report --------------------------------------------------------------------------------
    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        out = []
        esc = [r for r in rows if r.metric in ("escaped_failure_rate", "adaptive_escaped_failure_rate")]
        clean = [r for r in esc if r.hazard == "clean" and r.metric == "escaped_failure_rate"]
        if clean:
            monitor = clean[0].params.get("monitor", "")
            out.append(Headline(f"Escaped failures, clean (monitor {monitor})", clean[0], higher_is_better=False))
        if esc:
            worst = max(esc, key=lambda r: r.value)
            how = ", adaptive" if worst.metric.startswith("adaptive") else ""
            out.append(Headline(f"Worst escaped failures ({worst.hazard}{how})", worst, higher_is_better=False))
        exp = [r for r in rows if r.metric == "expected_escaped_failure_rate"]
        if exp:
            out.append(Headline("Expected escaped failures (deployment)", exp[0], higher_is_better=False))
        return out

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        by: dict[str, dict[str, StoredRow]] = {}
        for r in rows:
            by.setdefault(r.hazard, {})[r.metric] = r
        return [
            t for t in (_hazard_table(by), fmea_report_table(by), _validation_table(rows), _deployment_table(rows)) if t
        ]


def _hazard_table(by: dict[str, dict[str, StoredRow]]) -> Table | None:
    hazards = [h for h, m in by.items() if "escaped_failure_rate" in m]
    if not hazards:
        return None
    monitor = str(by[hazards[0]]["escaped_failure_rate"].params.get("monitor", ""))
    metrics = (
        "failure_rate",
        "caught_share",
        "escaped_failure_rate",
        "adaptive_escaped_failure_rate",
        "false_alarm_rate",
    )
    body = [[h, *(_cell(by[h].get(m)) for m in metrics), str(by[h]["escaped_failure_rate"].n)] for h in hazards]
    headers = ["hazard", "failure rate", "caught share", "escaped failures", "escaped (adaptive)", "false alarms", "n"]
    return Table(f"Escaped failures per hazard (monitor: {monitor}), exact 95% intervals", headers, body)


def fmea_report_table(by: dict[str, dict[str, StoredRow]]) -> Table | None:
    """The FMEA table (highest RPN first, with the raw probabilities) from stored rows grouped as
    ``{hazard: {metric: row}}``; None when the rows hold no FMEA."""
    hazards = sorted((h for h, m in by.items() if "rpn" in m), key=lambda h: (-by[h]["rpn"].value, h))
    if not hazards:
        return None
    body = []
    for rank, h in enumerate(hazards, 1):
        m = by[h]
        raw = m["rpn"].params
        miss = raw.get("miss_share")
        body.append(
            [
                str(rank),
                h,
                fmt_value(m["severity"].value),
                f"{_rank(m['occurrence'])} (p = {fmt_value(raw.get('failure_rate'))})",
                f"{_rank(m['detection'])} (missed = {'n/a' if miss is None else fmt_value(miss)})",
                _rank(m["rpn"]),
            ]
        )
    headers = ["rank", "hazard", "S (setting)", "O (failure rate)", "D (share of failures missed)", "RPN"]
    note = (
        "In brackets: the band range each score's measured proportion spans (its exact 95% interval); RPN's range "
        "is S x O x D at the ends of 97.5% ranges, so both ends hold together with probability at least 95%."
    )
    return Table("FMEA: failure modes by risk priority number RPN = S x O x D", headers, body, note)


def _rank(r: StoredRow) -> str:
    """A score with its band range, e.g. ``5 [5-6]`` (just the score when the range is one band)."""
    if r.ci_low is None or r.ci_high is None or r.ci_low == r.ci_high:
        return fmt_value(r.value)
    return f"{fmt_value(r.value)} [{fmt_value(r.ci_low)}-{fmt_value(r.ci_high)}]"


def _validation_table(rows: Sequence[StoredRow]) -> Table | None:
    val = sorted((r for r in rows if r.metric == "validation_escape"), key=lambda r: r.value)
    if not val:
        return None
    body = [
        [r.hazard.removeprefix("validation/"), fmt_value(r.value), fmt_ci(r), "yes" if r.params.get("selected") else ""]
        for r in val
    ]
    title = "Monitor chosen on validation data (mean escaped rate on clean validation inputs and synthetic outliers)"
    note = "Intervals: each set's exact interval at 97.5% (Bonferroni over the two sets), averaged."
    return Table(title, ["monitor", "validation escape", "95% CI", "chosen"], body, note)


def _deployment_table(rows: Sequence[StoredRow]) -> Table | None:
    dep = [r for r in rows if r.metric == "expected_escaped_failure_rate"]
    if not dep:
        return None
    body = [["expected escaped-failure rate", fmt_value(dep[0].value), fmt_ci(dep[0])]]
    return Table("Deployment, exposure-weighted (Bonferroni-adjusted exact interval)", ["", "value", "95% CI"], body)


def _for_plot(
    outcomes: dict[str, Outcome], adaptive: dict[str, Outcome]
) -> tuple[dict[str, Outcome], dict[str, Outcome]]:
    """Bars for the plot: with more than :data:`PLOT_MAX_BARS` hazards, the severities of each
    corruption are pooled into one bar (``corruption/<name> (all severities)``, all its inputs together)."""
    if len(outcomes) <= PLOT_MAX_BARS:
        return outcomes, adaptive
    pooled: dict[str, list[Outcome]] = {}
    for h, o in outcomes.items():
        parts = h.split("/")
        key = f"{parts[0]}/{parts[1]} (all severities)" if parts[0] == CORRUPTION and len(parts) == 3 else h
        pooled.setdefault(key, []).append(o)
    shown = {
        k: v[0] if len(v) == 1 else Outcome(torch.cat([o.failed for o in v]), torch.cat([o.flagged for o in v]))
        for k, v in pooled.items()
    }
    return shown, {h: a for h, a in adaptive.items() if h in shown}


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


def _bind(fn: Any, *args: Any) -> Any:
    return lambda: fn(*args)


def _differentiable_copy(ctx: AuditContext, name: str) -> ood.Detector:
    """The detector ``name`` fitted afresh on the fit data from ordinary (non-inference) tensors, so
    its learned state can take part in autograd."""
    fit = ctx.data.fit
    out = ctx.outputs_for(fit)
    plain = Outputs(out.logits.clone(), None if out.features is None else out.features.clone())
    det = ood.create(name)
    det.fit_outputs(ctx.model, plain, fit.y.to(plain.logits.device))
    return det


def _attack_source(ctx: AuditContext, hazard: str) -> tuple[torch.Tensor, torch.Tensor, float, str] | None:
    """Clean inputs, labels, eps and norm behind ``adversarial/<attack>/<eps>``.

    The adversarial check's hazards carry them (``x_clean``, ``eps``, ``norm``). For hazards from
    other providers they are read from the data: each input's source is the clean test input at the
    same position when the hazard keeps the test order, else the nearest clean input with the same
    label; the norm is L2 when every ``||x_adv - x||_2 <= eps`` (an L-inf attack moves images much
    further in L2), else L-inf. None when the hazard name has no eps or some input lies outside the
    ball around its source.
    """
    adv, clean = ctx.hazard(hazard), ctx.hazard("clean")
    x_clean, eps_attr, norm_attr = (getattr(adv, a, None) for a in ("x_clean", "eps", "norm"))
    if isinstance(x_clean, torch.Tensor) and isinstance(eps_attr, (int, float)) and norm_attr in ("linf", "l2"):
        return x_clean.cpu(), adv.y.cpu(), float(eps_attr), str(norm_attr)  # the provider says it
    try:
        eps = float(hazard.split("/")[-1])
    except ValueError:
        return None
    xa, ya = adv.x.cpu(), adv.y.cpu()
    if len(adv) == len(clean) and torch.equal(ya, clean.y.cpu()):
        src = clean.x.cpu()
    else:
        xc, yc = clean.x.cpu().flatten(1), clean.y.cpu()
        idx = []
        for start in range(0, len(adv), 1024):
            d = torch.cdist(xa[start : start + 1024].flatten(1).double(), xc.double())
            d[ya[start : start + 1024, None] != yc[None, :]] = float("inf")
            idx.append(d.argmin(dim=1))
        src = clean.x.cpu()[torch.cat(idx)] if idx else clean.x.cpu()[:0]
    delta = (xa - src).flatten(1).double()
    tol = eps * (1 + 1e-4) + 1e-6
    l2, linf = delta.norm(dim=1), delta.abs().amax(dim=1)
    norm = "l2" if bool((l2 <= tol).all()) else "linf"
    if not bool(((l2 if norm == "l2" else linf) <= tol).all()):
        return None
    return src, ya, eps, norm
