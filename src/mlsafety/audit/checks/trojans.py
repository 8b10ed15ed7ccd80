"""Check ``trojans``: is the audited model trojaned, towards which class, and with what trigger?

Runs the trojan scanners of :mod:`mlsafety.monitoring.trojans` on the audited model, each with
several seeds so every verdict comes with its spread:

* ``neural-cleanse`` reverse-engineers a trigger for every class (all classes in one batch) and
  flags classes whose mask is abnormally small (MAD anomaly index > 2); the anomaly index of
  every class and the recovered triggers are in the report.
* ``abs`` stimulates inner channels and reverse-engineers triggers from the suspicious ones.
* ``strip`` checks run-time traffic; here the probe is the clean test data plus, when Neural
  Cleanse recovered a trigger, the test data carrying it.
* ``activation-clustering`` and ``spectral-signatures`` inspect the training set (only when the
  audit has one).

When Neural Cleanse flags a class, hazard ``trojan/neural-cleanse-class-<k>`` is added: the clean
test inputs of the other classes with the recovered trigger stamped on, with their true labels,
so the systemic check measures how many triggered inputs fail and escape the monitor.

Every score is an estimate with a 95% interval made by
:func:`mlsafety.monitoring.trojans.evaluate.summarize_scan` (a smoothed class bootstrap for MAD
anomaly indices, exact for shares of inputs, Student's t over seeds otherwise; its module says what
each leaves out); verdicts and targets are decisions.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import torch

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, until_deadline
from mlsafety.audit._check import DECISION, NOT_APPLICABLE, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks._common import bind, params_of, require_int, require_names
from mlsafety.audit.views.trojans import TrojansView, nc_artifacts, scanner_metric
from mlsafety.core import ArrayDataset, Hazard, InputError, UnknownNameError, derive_seed, draw_seed
from mlsafety.metrics import auroc, bootstrap_two_sample, proportion
from mlsafety.monitoring.trojans import SCANNERS, ScanResult, Trigger, triggered_inputs
from mlsafety.monitoring.trojans.evaluate import MAD_SCORE, N_CLASS_BOOT, NC, needs_seed_spread, summarize_scan

KIND = "trojan"
_SCANS: weakref.WeakKeyDictionary[AuditContext, dict[str, ScanResult]] = weakref.WeakKeyDictionary()
"""Memo of scan results per audit context (scans are pure functions of the context's model, data,
seed and parameters; the hazard provider and the check share them)."""


def _params(ctx: AuditContext) -> dict[str, Any]:
    return params_of(ctx, Trojans)


def _scanner_kwargs(name: str, params: dict[str, Any], g: torch.Generator) -> dict[str, Any]:
    """Constructor arguments of scanner ``name``; its seeds are drawn from ``g`` (derived from the run
    seed, the check and the scanner), so two run seeds never share a scan and two scanners never share
    a stream."""
    n = int(params["n_seeds"])
    if n < 1:
        raise InputError(f"trojans n_seeds must be at least 1, got {n}")
    kw: dict[str, Any] = {"seeds": tuple(draw_seed(g) for _ in range(n))}
    if name == NC:
        kw["steps"] = int(params["nc_steps"])
    if name == "abs":
        kw["seeds"] = kw["seeds"][:1]  # the slowest scanner; one seed keeps the default run short
    return kw


def _clean_set(ctx: AuditContext, params: dict[str, Any]) -> ArrayDataset:
    val = ctx.data.val
    cap = int(params["max_clean"])
    if len(val) <= cap:
        return val
    idx = torch.randperm(len(val), generator=ctx.generator("trojans", "clean-subset"))[:cap]
    return val.subset(idx)


def _scan(ctx: AuditContext, name: str, probe: torch.Tensor | None = None) -> ScanResult:
    memo = _SCANS.setdefault(ctx, {})
    if name not in memo:
        params = _params(ctx)
        scanner = SCANNERS.create(name, **_scanner_kwargs(name, params, ctx.generator("trojans", name, "seeds")))
        memo[name] = scanner.scan(ctx.model, _clean_set(ctx, params), train=ctx.data.train, probe=probe)
    return memo[name]


def _recovered(ctx: AuditContext) -> list[Trigger]:
    """Triggers Neural Cleanse recovered for the classes it flagged (most anomalous first)."""
    if NC not in _params(ctx)["scanners"]:
        return []
    result = _scan(ctx, NC)
    return [result.triggers[t] for t in result.targets]


def _hazard(trigger: Trigger) -> Hazard:
    return Hazard.trojan(trigger.name).with_(source="trojans")


PENDING = Hazard.trojan(NC)
"""The hazard the check declares when the audit is planned: ``trojan/neural-cleanse``, the triggers
Neural Cleanse will recover. The search itself runs in the check's first task, after the run is
recorded (so an interrupted audit does not repeat it while planning); :func:`expand_hazard` turns this
hazard into the recovered triggers' hazards (none, one or several) once it has run."""


def expand_hazard(ctx: AuditContext, hazard: Hazard) -> list[Hazard]:
    """``hazard``, or for :data:`PENDING` the hazards of the triggers Neural Cleanse recovered (running
    the search when this context has not yet: a resumed audit in a new process recomputes it, seeded)."""
    if hazard.kind != KIND or hazard.name != NC:
        return [hazard]
    return [_hazard(t) for t in _recovered(ctx)]


@hazard_provider(KIND)
def _triggered(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``trojan/<trigger>``: clean test inputs of the other classes with a recovered trigger, true labels."""
    found = {t.name: t for t in _recovered(ctx)}
    rest = hazard.name or ""
    if rest not in found:
        raise UnknownNameError(
            f"unknown hazard {str(hazard)!r}; this audit recovered: {', '.join(found) or 'no trigger'}"
        )
    trigger = found[rest]
    data = triggered_inputs(trigger.apply_trigger, ctx.data.test, trigger.target)
    return ArrayDataset(data.x, data.y, name=f"trojan-{rest}", kind="in", description=f"test data + trigger {rest}")


@register_check("trojans")
class Trojans(Check):
    pillar = "monitoring"
    title = "Trojan scan"
    description = (
        "Trojan (backdoor) scanners with several seeds each: Neural Cleanse (trigger reverse-engineering, MAD "
        "anomaly index, flagged above 2), ABS (neuron stimulation, REASR), STRIP (superimposition entropy), and, "
        "with a training set, activation clustering and spectral signatures. Scores: higher = more suspicious, "
        "mean over seeds, with a 95% interval: for MAD anomaly indices (Neural Cleanse, spectral signatures) a "
        "smoothed bootstrap over the classes that form the median/MAD reference (it leaves out the "
        "reverse-engineering's own randomness), exact for shares of inputs (STRIP, ABS's REASR), Student's t over "
        "seeds otherwise (activation clustering: k-means initialisation only, zero width when every seed agrees). "
        "Verdicts and targets are decisions."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "scanners": ["neural-cleanse", "abs", "strip", "activation-clustering", "spectral-signatures"],
        "n_seeds": 3,
        "nc_steps": 200,
        "max_clean": 359,
    }
    quick: ClassVar[dict[str, Any]] = {
        "scanners": ["neural-cleanse", "strip"],
        "n_seeds": 1,
        "nc_steps": 150,
        "max_clean": 200,
    }
    metrics = (
        "attack_success_rate", "accuracy", "strip_input_auroc",  # on the recovered triggers
        "*_score", "*_flagged", "*_flag_rate", "*_target", "neural_cleanse_anomaly_index_class_*",  # per scanner
        BUDGET_NOT_MEASURED,
        NOT_APPLICABLE,  # a recovered trigger's hazard without inputs (every test input is of its target class)
    )  # fmt: skip
    view = TrojansView

    def hazards(self, ctx: AuditContext) -> list[Hazard]:
        """:data:`PENDING` when Neural Cleanse is among the scanners: no scan runs while the audit is planned."""
        names = self._validate(ctx)  # the engine asks for hazards first: refuse bad settings before any scan
        return [PENDING.with_(source="trojans")] if NC in names else []

    def tasks(self, ctx: AuditContext) -> list[Task]:
        """One task per scanner (Neural Cleanse first, with the recovered triggers' rows), so an interrupted
        audit resumes between scans and a budget can cut one."""
        names = self._validate(ctx)  # when the audit is planned, before its run is stored
        order = [n for n in names if n == NC] + [n for n in names if n != NC]
        return [Task(n, bind(self._scanner_task, ctx, n, n == order[0])) for n in order]

    def run(self, ctx: AuditContext) -> TaskResult:
        """Every task's rows, in task order (a single call; the engine runs the tasks)."""
        rows: list[Row] = []
        artifacts: list[Artifact] = []
        for task in self.tasks(ctx):
            out = task.run()
            rows += out.rows
            artifacts += out.artifacts
        return TaskResult(rows, artifacts)

    def _validate(self, ctx: AuditContext) -> list[str]:
        """The scanner names, after checking them and that every score can carry its interval."""
        p = self.params  # checked when the audit is planned, before its run is stored
        names = require_names(self.name, p, "scanners", "['neural-cleanse', 'strip']")
        for key in ("n_seeds", "nc_steps", "max_clean"):
            require_int(self.name, p, key, 1)
        g = torch.Generator().manual_seed(0)  # the seeds drawn here only serve the check below
        for n in names:
            SCANNERS.create(n, **_scanner_kwargs(n, p, g))  # unknown names and settings fail with their reason
        seeded = [
            n
            for n in names
            if needs_seed_spread(n) and not ("train" in SCANNERS.get(n).needs and ctx.data.train is None)
        ]
        if seeded and p["n_seeds"] < 2:
            raise InputError(
                f"trojans: the interval of {seeded[0]}'s score is its spread over seeds; "
                f"set n_seeds to 2 or more (got {self.params['n_seeds']})"
            )
        return names

    def _scanner_task(self, ctx: AuditContext, scanner: str, first: bool) -> TaskResult:
        """Scanner ``scanner``'s rows (the first task also stores the recovered triggers' rows)."""
        rows: list[Row] = []
        artifacts: list[Artifact] = []
        triggers = _recovered(ctx)
        for trig in triggers if first else []:
            hz = _hazard(trig)
            data = ctx.hazard(hz)
            if len(data) == 0:  # every test input is of the target class: no rate of zero inputs exists
                rows.append(_no_inputs_row(hz, trig))
                continue
            pred = ctx.outputs(hz).pred
            rows.append(Row.of(str(hz), "attack_success_rate", proportion(pred == trig.target), mask_l1=trig.l1))
            rows.append(Row.of(str(hz), "accuracy", proportion(pred == data.y.to(pred.device))))
        reached = False
        # under --budget Neural Cleanse (the headline) always runs; another scanner only when it fits its deadline
        for name in until_deadline(ctx, [scanner], f"trojans/{scanner}", first=1 if scanner == NC else 0):
            reached = True
            needs = SCANNERS.get(name).needs
            if "train" in needs and ctx.data.train is None:
                continue
            probe = None
            if "probe" in needs:
                clean_x = ctx.hazard(Hazard.clean()).x[:200]
                trig_x = ctx.hazard(_hazard(triggers[0])).x[:200] if triggers else clean_x[:0]
                probe = torch.cat([clean_x, trig_x])
            res = _scan(ctx, name, probe)
            rows += _scanner_rows(ctx, res, probe)
            # the AUROC needs triggered inputs: a trigger's hazard without them has its not_applicable row instead
            if name == "strip" and triggers and len(ctx.hazard(_hazard(triggers[0]))) > 0:
                s = res.sample_scores
                assert s is not None
                n_clean = min(200, len(ctx.hazard(Hazard.clean())))
                seed = derive_seed(ctx.seed, self.name, "strip-input-auroc")
                est = bootstrap_two_sample(auroc, s[:n_clean], s[n_clean:], n_boot=1000, seed=seed)
                rows.append(Row.of(str(_hazard(triggers[0])), "strip_input_auroc", est))
            if name == NC:
                artifacts += nc_artifacts(res)
        if not reached:
            covers = [f"*/{scanner_metric(scanner, '*')}"]  # its figures are stored under clean and the triggers
            rows.append(not_measured_row(str(Hazard.trojan(scanner)), f"the {scanner} scan", covers))
        return TaskResult(rows, artifacts)


def _no_inputs_row(hazard: Hazard, trigger: Trigger) -> Row:
    """The :data:`NOT_APPLICABLE` row of a recovered trigger's hazard without inputs (every test input is of
    the trigger's target class), in place of its attack success rate, accuracy and STRIP input AUROC."""
    why = (
        f"{hazard} has no inputs, so none of its rates (attack_success_rate, accuracy, strip_input_auroc) can be "
        f"measured (a recovered trigger's hazard holds the test inputs not of the trigger's target class, "
        f"{trigger.target}, and every test input is of that class)"
    )
    return Row.exact(str(hazard), NOT_APPLICABLE, 1.0, DECISION, reason=why, mask_l1=trigger.l1)


def _shares(ctx: AuditContext, res: ScanResult, probe: torch.Tensor | None) -> list[int] | None:
    """Per seed, the number of inputs behind a share scanner's score (None for other scanners)."""
    if res.scanner == "strip":
        assert probe is not None
        return [len(probe)] * len(res.runs)
    if res.scanner == "abs":
        clean_y = _clean_set(ctx, _params(ctx)).y
        return [int((clean_y != next(iter(r.triggers))).sum()) for r in res.runs]
    return None


def _present(ctx: AuditContext, res: ScanResult) -> torch.Tensor | None:
    """A MAD scanner of the training set (spectral signatures): the classes with enough training
    inputs to be scored (None for other scanners)."""
    if res.scanner == NC or MAD_SCORE not in SCANNERS.tags(res.scanner):
        return None
    train = ctx.data.train
    assert train is not None and res.runs[0].per_class is not None
    k = int(res.runs[0].per_class.numel())
    min_class = int(getattr(SCANNERS.create(res.scanner), "min_class", 1))
    return torch.bincount(train.y.long().cpu(), minlength=k)[:k] >= min_class


def _scanner_rows(ctx: AuditContext, res: ScanResult, probe: torch.Tensor | None = None) -> list[Row]:
    summary = summarize_scan(
        res, ctx.generator("trojans", res.scanner, "class-bootstrap"),
        per_class_generator=ctx.generator("trojans", NC, "class-bootstrap-per-class"),
        present=_present(ctx, res), shares=_shares(ctx, res, probe),
    )  # fmt: skip
    how = summary.interval
    params = {"threshold": res.threshold, "scores": res.scores, "score_std": res.score_std, "interval": how}
    clean = str(Hazard.clean())
    target = float(res.target if res.target is not None else -1)
    rows = [
        Row.of(clean, scanner_metric(res.scanner, "score"), summary.score, **params),
        Row.exact(clean, scanner_metric(res.scanner, "flagged"), float(res.flagged), "decision",
                  threshold=res.threshold),
        Row.of(clean, scanner_metric(res.scanner, "flag_rate"), summary.flag_rate, over="seeds"),
        Row.exact(clean, scanner_metric(res.scanner, "target"), target, "decision", all=res.targets),
    ]  # fmt: skip
    norms = summary.mask_l1
    for c, est in enumerate(summary.anomaly_index):
        assert norms is not None
        rows.append(
            Row.of(
                clean,
                scanner_metric(res.scanner, "anomaly_index", c),
                est,
                mask_l1=float(norms[:, c].mean()),
                mask_l1_by_seed=norms[:, c].tolist(),
                interval=f"smoothed bootstrap over the {len(summary.anomaly_index)} classes ({N_CLASS_BOOT} resamples)",
            )
        )
    return rows
