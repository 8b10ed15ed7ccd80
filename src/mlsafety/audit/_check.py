"""What a check is: a registered unit of work that turns (model, data, params, seed) into rows.

A check writes one file under ``audit/checks/``::

    @register_check("clean")
    class Clean(Check):
        pillar = "performance"
        title = "Clean accuracy"
        defaults = {"batch_size": 256}

        def run(self, ctx: AuditContext) -> TaskResult:
            out = ctx.outputs("clean")
            est = accuracy(out.logits, ctx.labels("clean"))
            return TaskResult([Row.of("clean", "accuracy", est)])

Checks that do a lot of independent work split it into :class:`Task` objects (``tasks``), so the
engine stores each task's rows as soon as it ends and ``--resume`` skips what is stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mlsafety.core import Hazard, InputError, Registry
from mlsafety.metrics import Estimate

if TYPE_CHECKING:
    from mlsafety.audit._context import AuditContext

PILLARS = ("performance", "robustness", "monitoring", "alignment", "systemic")
"""Report sections, in order; every check belongs to one."""

_METRIC = re.compile(r"^[a-z0-9_]+$")

ESTIMATE = "estimate"
DECISION = "decision"
COUNT = "count"
SETTING = "setting"
KINDS: tuple[str, ...] = (ESTIMATE, DECISION, COUNT, SETTING)
"""What a stored number is, stored with it:

* ``estimate``: a measured quantity subject to sampling (or seed) error; it carries a 95% interval
  with ``ci_low <= value <= ci_high``.
* ``decision``: what the audit concluded or chose by a documented rule (a verdict, a flagged
  class, the chosen detector); exact by construction, no interval.
* ``count``: a number of things (inputs, classes, seeds); exact, no interval.
* ``setting``: a value the user or a default configured (a threshold, a severity); no interval.
"""


def interval_problem(kind: str, value: float, ci_low: float | None, ci_high: float | None) -> str | None:
    """Why a row of ``kind`` with this value and interval breaks the kind contract, or None when it holds."""
    if kind not in KINDS:
        return f"kind {kind!r} is not one of {', '.join(KINDS)}"
    if kind != ESTIMATE:
        return None
    if ci_low is None or ci_high is None:
        return "an estimate must carry a 95% interval (ci_low, ci_high)"
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return f"interval [{ci_low}, {ci_high}] is not finite"
    slack = 1e-9 * max(1.0, abs(value))  # the value and its interval may come from different float paths
    if not ci_low - slack <= value <= ci_high + slack:
        return f"value {value} lies outside its interval [{ci_low}, {ci_high}]"
    return None


@dataclass(frozen=True)
class Row:
    """One measured number: ``<check>/<hazard>/<metric>`` with its kind, interval and sample size.

    ``kind`` says what the number is (:data:`KINDS`): an ``estimate`` (the default) must carry its
    95% interval ``ci_low <= value <= ci_high`` (a ``ValueError`` otherwise); a ``decision``,
    ``count`` or ``setting`` carries none. ``params`` records what produced the number.
    """

    hazard: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    kind: str = ESTIMATE

    def __post_init__(self) -> None:
        if not _METRIC.match(self.metric):
            raise ValueError(f"metric name {self.metric!r} must be lower-case with underscores")
        if not self.hazard or self.hazard.startswith("/") or self.hazard.endswith("/"):
            raise ValueError(f"bad hazard name {self.hazard!r}")
        if not math.isfinite(float(self.value)):
            raise ValueError(f"{self.hazard}/{self.metric}: value {self.value} is not finite")
        if self.kind != ESTIMATE and (self.ci_low is not None or self.ci_high is not None):
            raise ValueError(f"{self.hazard}/{self.metric}: a {self.kind} carries no interval")
        problem = interval_problem(self.kind, float(self.value), self.ci_low, self.ci_high)
        if problem is not None:
            raise ValueError(f"{self.hazard}/{self.metric}: {problem} (or give a non-estimate its kind)")

    @classmethod
    def of(cls, hazard: str, metric: str, estimate: Estimate, **params: Any) -> Row:
        """A row from an :class:`~mlsafety.metrics.Estimate` (value, interval, n)."""
        return cls(hazard, metric, estimate.value, estimate.ci_low, estimate.ci_high, estimate.n, params)

    @classmethod
    def exact(cls, hazard: str, metric: str, value: float, kind: str, n: int | None = None, /, **params: Any) -> Row:
        """A row that is not an estimate (a ``decision``, ``count`` or ``setting``): no interval.

        The leading arguments are positional-only, so ``params`` may hold any name (``n`` too)."""
        if kind == ESTIMATE:
            raise ValueError(f"{hazard}/{metric}: use Row.of for an estimate (it needs an interval)")
        return cls(hazard, metric, value, None, None, n, params, kind)

    def params_json(self) -> str:
        return json.dumps(dict(self.params), sort_keys=True, default=str)


@dataclass(frozen=True)
class Artifact:
    """A picture or table a check hands to the report (stored in the results database)."""

    name: str
    data: bytes
    mime: str = "image/png"
    caption: str = ""


@dataclass
class TaskResult:
    """What a task produced: rows for the store, artifacts for the report."""

    rows: list[Row] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    """An independent piece of a check; ``key`` is unique within the check and stable across runs.

    ``needs`` names tasks of the same check (by key, each before this one in the check's list) whose stored
    rows this task reads with :meth:`AuditContext.rows_of` instead of recomputing what produced them (the
    adversarial robustness curve is drawn from the attack tasks' rows). The executor hands them over: in
    one process as they are stored, on Ray as the results of those Ray tasks, and on ``--resume`` from the
    store; a task with needs therefore never repeats another task's work on another worker.
    """

    key: str
    run: Callable[[], TaskResult]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredRow:
    """A row as read back from the store (what report renderers and gates see)."""

    check: str
    hazard: str
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int | None
    params: dict[str, Any]
    kind: str = ESTIMATE

    @property
    def key(self) -> str:
        return f"{self.check}/{self.hazard}/{self.metric}"


@dataclass(frozen=True)
class Headline:
    """A scorecard entry: a label, the metric key it shows, and whether higher is better."""

    label: str
    row: StoredRow
    higher_is_better: bool = True
    fmt: str = "{:.3f}"


@dataclass(frozen=True)
class Table:
    """A table for the report: a title, column headers and rows of already formatted cells."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""
    """A sentence shown under the table (e.g. which convention a column follows)."""


class View:
    """How a check's stored rows read in the report: scorecard entries and tables.

    A check's view lives in ``audit/views/<check>.py`` (rendering is not computing) and the check
    points at it with ``view = MyView``. The base class shows every row, one line each.
    """

    artifact_order: ClassVar[tuple[str, ...]] = ()
    """Names of the check's pictures in the order the report shows them (those not named follow, in the order
    their tasks stored them): the tasks that draw them may run in any order."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        """Scorecard entries taken from the check's stored rows (none by default)."""
        return []

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        """Tables for the report section; by default every row, one line each."""
        if not rows:
            return []
        body = [[r.hazard, r.metric, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)] for r in rows]
        return [Table(title or "Results", ["hazard", "metric", "value", "95% CI", "n"], body)]


class Check:
    """Base class of audit checks.

    Subclasses set ``pillar``, ``title``, ``description`` and ``defaults`` (every parameter with
    its default; ``quick`` overrides some of them for ``--quick``) and write :meth:`run` (or
    :meth:`tasks` for work split into resumable pieces). Constructors only store parameters.
    """

    name: ClassVar[str]
    pillar: ClassVar[str] = "performance"
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    quick: ClassVar[dict[str, Any]] = {}
    higher_is_better: ClassVar[frozenset[str]] = frozenset()
    """Metric names for which a larger value is better (``compare`` calls a drop a regression)."""
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    """Metric names for which a smaller value is better."""
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    """The input modalities the check can measure (``"image"``, ``"text"``: classifiers of either;
    ``"lm"``: a causal language model, read as ``ctx.lm``); on a model of another
    modality the engine does not plan the check and stores one :data:`NOT_APPLICABLE` row saying
    why (:meth:`not_applicable`). A check is image-only unless it says otherwise."""
    metrics: ClassVar[tuple[str, ...]] = ()
    """Every metric name the check can store, for any parameters, as ``fnmatch`` patterns
    (``"class_*_accuracy"``). A gate on a metric outside the declaration is refused before the audit
    runs. Every built-in check declares it (a conformance test holds it to the stored rows); a
    third-party check may leave it empty, and its gates are then checked only after the run."""
    metrics_by_modality: ClassVar[dict[str, tuple[str, ...]]] = {}
    """The patterns of :attr:`metrics` the check stores on each modality, when they differ by modality
    (a modality not listed: all of :attr:`metrics`). A gate on a metric the audited modality does not
    store is refused once the model is loaded, before anything is stored."""
    independent_tasks: ClassVar[bool] = False
    """True when the check's tasks share nothing dear with each other (each builds its own hazard inputs;
    what one reads of another comes through :attr:`Task.needs`), so an executor may send them to different
    workers at no extra cost. False (the default): they share what they compute (a trojan scan and its
    hazards), so a distributed executor keeps them on one worker (``audit/_executors.py``)."""
    reads_other_checks: ClassVar[bool] = False
    """True when the check's tasks read hazards other checks build (defence in depth judges the attacks,
    corruptions and OOD sets the others planned): a distributed executor then keeps each check's tasks
    together (one audit) or each run's tasks on one worker (many audits), so no worker rebuilds another's
    attacks."""

    def __init__(self, quick: bool = False, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise InputError(
                f"check {self.name!r} has no parameter {unknown[0]!r}; "
                f"it takes: {', '.join(sorted(self.defaults)) or 'no parameters'}"
            )
        merged = dict(self.defaults)
        if quick:
            merged.update(self.quick)
        merged.update(params)
        self.params: dict[str, Any] = merged

    @classmethod
    def not_applicable(cls, modality: str) -> str | None:
        """Why the check cannot run on inputs of ``modality`` (``image-only: needs pixel inputs``), or
        None when it can."""
        if modality in cls.modalities:
            return None
        if modality == "lm":
            return f"{'/'.join(cls.modalities)}-only: needs a classifier's logits"
        needs = ", ".join(INPUTS.get(m, f"{m} inputs") for m in cls.modalities)
        return f"{'/'.join(cls.modalities)}-only: needs {needs}"

    # -- work ----------------------------------------------------------------------------------
    def hazards(self, ctx: AuditContext) -> Sequence[Hazard | str]:
        """Hazards this check produces (so the systemic check can consume them); none by default."""
        return []

    def tasks(self, ctx: AuditContext) -> list[Task]:
        """The check's work as resumable tasks; by default one task that calls :meth:`run`."""
        return [Task(self.name, lambda: _as_result(self.run(ctx)))]

    def run(self, ctx: AuditContext) -> TaskResult | list[Row]:
        raise NotImplementedError(f"check {self.name!r} must implement run() or tasks()")

    def run_tasks(self, ctx: AuditContext, tasks: Sequence[Task] | None = None) -> list[TaskResult]:
        """Run ``tasks`` (default: all of :meth:`tasks`) one after another in this process, handing each the
        rows of the earlier ones it :attr:`~Task.needs`, as the engine does; for using a check outside an audit.
        """
        results = []
        for task in self.tasks(ctx) if tasks is None else tasks:
            result = task.run()
            ctx.earlier[(self.name, task.key)] = list(result.rows)
            results.append(result)
        return results

    # -- report (rendering lives in the check's view, audit/views/<check>.py) ------------------
    view: ClassVar[type[View]] = View
    """The check's report view; the base :class:`View` lists every row."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        """Scorecard entries from this check's stored rows (its view's; none when it was not run)."""
        measured = [r for r in rows if not is_skip(r) and r.metric != TRUNCATED]
        return cls.view.headlines(measured) if measured or len(measured) == len(rows) else []

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        """Tables for the report section: why the check was not run (if so), how many texts were
        truncated (if any input was), then its view's."""
        out = []
        skips = [r for r in rows if is_skip(r)]
        if skips:
            why = [[MODALITY_NAMES.get(m, m), str(r.params.get("reason", ""))]
                   for r in skips for m in [str(r.params.get("modality", ""))]]  # fmt: skip
            out.append(Table("Not run", ["inputs", "reason"], why))
        cut = [r for r in rows if r.metric == TRUNCATED]
        if any(r.value > 0 for r in cut):
            body = [[r.hazard, fmt_value(r.value), "" if r.n is None else str(r.n), str(r.params.get("max_length", ""))]
                    for r in cut]  # fmt: skip
            note = "Warning: these texts were longer than the model takes; it judged only their first tokens."
            out.append(Table("Truncated inputs", ["hazard", "truncated", "of n", "max tokens"], body, note))
        measured = [r for r in rows if not is_skip(r) and r.metric != TRUNCATED]
        if measured or len(measured) == len(rows):  # a view is never shown only the rows taken out above
            out += cls.view.tables(measured, cls.title or getattr(cls, "name", ""))
        return out


NOT_APPLICABLE = "not_applicable"
"""The metric of the row a check stores when it does not apply to the audited inputs (a ``decision``
row, value 1, with ``reason`` and ``modality`` params); any check may store it."""

TRUNCATED = "truncated_inputs"
"""The metric of the warning row of a text hazard: how many of its texts were cut at the model's
maximum length (a ``count``; ``n`` is the hazard's size, ``max_length`` a param)."""

MODALITY_NAMES = {"image": "image", "text": "text", "lm": "language model"}
"""How the report and the CLI name each audit modality (``ctx.modality``)."""

INPUTS = {"image": "pixel inputs", "text": "text inputs", "lm": "a causal language model"}
"""What each modality's checks need, for the reason a skipped check gives."""


def skip_row(check: type[Check], modality: str) -> Row:
    """The row stored for ``check`` on inputs of ``modality`` it does not support (under ``clean``)."""
    reason = check.not_applicable(modality)
    if reason is None:
        raise ValueError(f"check {check.name!r} supports {modality} inputs")
    return Row.exact("clean", NOT_APPLICABLE, 1.0, DECISION, modality=modality, reason=reason)


def is_skip(row: StoredRow) -> bool:
    """True for the row a check stored because it did not apply to the audited inputs."""
    return row.metric == NOT_APPLICABLE and row.kind == DECISION and "modality" in row.params


def _as_result(out: TaskResult | list[Row]) -> TaskResult:
    return out if isinstance(out, TaskResult) else TaskResult(list(out))


def fmt_value(v: float | None) -> str:
    if v is None:
        return ""
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"


def fmt_ci(r: StoredRow | Row) -> str:
    """The interval as ``[low, high]``; for a row that is not an estimate, its kind in parentheses
    (``(decision)``, ``(count)``, ``(setting)``), so a table never shows an empty interval cell."""
    if r.kind != ESTIMATE:
        return f"({r.kind})"
    if r.ci_low is None or r.ci_high is None:
        return ""
    return f"[{fmt_value(r.ci_low)}, {fmt_value(r.ci_high)}]"


CHECKS: Registry[Check] = Registry("check")
register_check = CHECKS.register
