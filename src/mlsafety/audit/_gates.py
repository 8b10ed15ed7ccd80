"""Pass/fail gates over stored metrics, and run-to-run comparison.

A metric key is ``<check>/<hazard>/<metric>``: the check is the first segment, the metric the last,
the hazard everything between (it may contain ``/``; it is read by :meth:`Hazard.parse
<mlsafety.core.Hazard.parse>`, so ``adversarial/pgd/0.10`` names the row ``adversarial/pgd/0.1``).
In a gate, a hazard of ``*`` matches any one hazard, so ``defence-in-depth/*/escaped_failure_rate``
bounds every hazard at once; a hazard with a ``*`` inside (``ood/*``, ``adversarial/pgd/*``) is a
pattern over hazards' string forms.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlsafety.audit._check import _METRIC, Check, StoredRow
from mlsafety.core import Hazard, InputError, UnknownNameError

ANY = "*"
"""A gate's hazard that matches any one hazard."""


@dataclass(frozen=True)
class GateKey:
    """A parsed gate key (:func:`parse_gate_key`).

    Attributes:
        check: the check's registry name.
        hazard: the typed hazard, or a pattern with ``*`` over hazards' string forms (``*``: any).
        metric: the metric name.
    """

    check: str
    hazard: Hazard | str
    metric: str

    def matches(self, row: StoredRow) -> bool:
        """Whether the stored ``row`` is one this gate bounds."""
        if row.check != self.check or row.metric != self.metric:
            return False
        if isinstance(self.hazard, Hazard):
            return row.hazard == str(self.hazard)
        return fnmatch.fnmatchcase(row.hazard, self.hazard)

    def __str__(self) -> str:
        return f"{self.check}/{self.hazard}/{self.metric}"


@dataclass(frozen=True)
class GateFailure:
    key: str
    value: float
    bound: float
    kind: str  # "fail_under" or "fail_over"

    def __str__(self) -> str:
        rel = "below" if self.kind == "fail_under" else "above"
        return f"{self.key} = {self.value:.4g} is {rel} the bound {self.bound:g} ({self.kind})"


def parse_gate_key(key: str) -> GateKey:
    """The one reader of a gate's metric key ``<check>/<hazard>/<metric>`` (see the module docs).

    Raises:
        InputError: the key has fewer than three parts, or its hazard is not a hazard's string form.
    """
    check, _, rest = key.partition("/")
    hazard, _, metric = rest.rpartition("/")
    if not check or not hazard or not metric:
        raise InputError(f"gate metric {key!r} must look like <check>/<hazard>/<metric>, e.g. clean/clean/accuracy")
    if ANY in hazard:
        if hazard.startswith("/") or hazard.endswith("/") or "//" in hazard:
            raise InputError(f"gate metric {key!r}: hazard pattern {hazard!r} has an empty part")
        return GateKey(check, hazard, metric)
    try:
        return GateKey(check, Hazard.parse(hazard), metric)
    except InputError as err:
        raise InputError(f"gate metric {key!r}: {err}") from None


def check_gate_bound(key: str, value: object, where: str = "gate") -> float:
    """The bound as a float; raise :class:`InputError` unless it is a finite number.

    A NaN bound can never fail (every comparison with NaN is false) and an infinite one always
    or never does, so both are refused rather than silently accepted.
    """
    example = f'"{key}" = 0.95' if "[" in where else f"{key}=0.95"  # a config file's table, or an option
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} {key!r}: bound {value!r} is not a number; give e.g. {example}")
    bound = float(value)
    if not math.isfinite(bound):
        raise InputError(
            f"{where} {key!r}: bound {bound} is not a finite number (a gate with it "
            f"{'never fails' if math.isnan(bound) else 'always or never fails'}); give e.g. {example}"
        )
    return bound


def parse_gate_option(text: str) -> tuple[str, float]:
    """``METRIC=VALUE`` from the command line; the value must be a finite number."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"gate {text!r} must look like METRIC=VALUE, e.g. clean/clean/accuracy=0.95")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"gate {text!r}: {value!r} is not a number; give e.g. {key.strip()}=0.95") from None
    return key.strip(), check_gate_bound(key.strip(), number)


def validate_gates(
    fail_under: Mapping[str, float],
    fail_over: Mapping[str, float],
    checks: Sequence[Check] | None = None,
) -> list[GateKey]:
    """Check every gate before the audit runs; return the parsed keys.

    A gate must look like ``<check>/<hazard>/<metric>`` with a finite bound, name a registered
    check that is among ``checks`` (the selected checks, when given), and a metric the check can
    store: lower-case with underscores and matching one of the check's declared ``metrics``
    patterns (every built-in check declares them, a conformance test holds them to what the
    checks store; a third-party check registered without a declaration has its gates checked
    only after the run). A misspelt metric is refused with the closest declared name, a renamed
    one with its new names (:data:`RENAMED_METRICS`). A gate that passes here but matches no
    stored row (e.g. a hazard that was not run) is still refused after the run by
    :func:`evaluate_gates`; one on a check that does not apply to the model's modality is refused
    once the model is loaded, before anything is stored (:func:`check_gates_apply`).

    Raises:
        InputError: one line naming the gate, the problem and the fix.
    """
    from mlsafety.audit._check import CHECKS

    selected = None if checks is None else {c.name: type(c) for c in checks}
    keys = []
    for option, gates in (("--fail-under", fail_under), ("--fail-over", fail_over)):
        for text, bound in gates.items():
            check_gate_bound(text, bound, f"{option} gate")
            key = parse_gate_key(text)
            if key.check not in CHECKS:
                raise InputError(
                    f"{option} gate {text!r}: unknown check {key.check!r}; checks: {', '.join(CHECKS.available())}"
                )
            if selected is not None and key.check not in selected:
                raise InputError(
                    f"{option} gate {text!r}: check {key.check!r} is not selected; "
                    f"add --check {key.check} or drop the gate"
                )
            if not _METRIC.match(key.metric):
                raise InputError(
                    f"{option} gate {text!r}: metric {key.metric!r} cannot exist (metric names are lower-case "
                    "with underscores); `mlsafety runs show RUN_ID` lists the metric keys"
                )
            problem = metric_problem(key.check, key.metric)
            if problem:
                raise InputError(f"{option} gate {text!r}: {problem}")
            keys.append(key)
    return keys


def check_gates_apply(
    fail_under: Mapping[str, float], fail_over: Mapping[str, float], checks: Sequence[Check], modality: str
) -> None:
    """Refuse a gate on a selected check that does not apply to the model's ``modality``.

    Such a check is not run (it stores only its ``clean/not_applicable`` row, :meth:`Check.not_applicable`),
    so the gate could only fail after the run with no metric to bound; it is refused once the model
    is loaded, before anything is stored. So is a gate on a metric the check does not store on that
    modality (:attr:`~mlsafety.audit.Check.metrics_by_modality`). A gate on ``not_applicable`` itself
    stays allowed.

    Raises:
        InputError: one line naming the gate, the check's modalities and the fix.
    """
    from mlsafety.audit._check import MODALITY_NAMES, NOT_APPLICABLE

    by_name = {c.name: type(c) for c in checks}
    for option, gates in (("--fail-under", fail_under), ("--fail-over", fail_over)):
        for text in gates:
            key = parse_gate_key(text)
            cls = by_name.get(key.check)
            if cls is None or key.metric == NOT_APPLICABLE:
                continue
            named = f"{MODALITY_NAMES.get(modality, modality)} models".replace("model models", "models")
            if cls.not_applicable(modality) is not None:
                kinds = "/".join(MODALITY_NAMES.get(m, m) for m in cls.modalities)
                raise InputError(
                    f"{option} gate {text!r}: the {key.check} check is {kinds}-only and is not run on {named}; "
                    f"remove the gate, or audit a model with {kinds} inputs"
                )
            stored = cls.metrics_by_modality.get(modality)
            if stored is not None and not any(fnmatch.fnmatchcase(key.metric, pat) for pat in stored):
                raise InputError(
                    f"{option} gate {text!r}: the {key.check} check does not store {key.metric} on {named} "
                    f"(it stores {', '.join(stored)}); remove the gate or gate one of those"
                )


RENAMED_METRICS: dict[str, tuple[str, ...]] = {
    "fpr_at_95_tpr": ("fpr95_id_positive", "fpr95_ood_positive"),
}
"""Metric names the audit no longer stores, with the names that replaced them (matched as the
whole metric or its ``_``-separated tail, so ``msp_fpr_at_95_tpr`` is caught too)."""

_RENAMED_HINTS = {
    "fpr_at_95_tpr": "{0} (in-distribution inputs as positive, the figure the old name gave: ODIN, OpenOOD v1.0) "
    "or {1} (OOD inputs as positive: OpenOOD v1.5, pytorch-ood)",
}


def metric_problem(check: str, metric: str) -> str | None:
    """Why ``check`` cannot store ``metric`` (one clause with the fix), or None when it can.

    None too when the check declares no ``metrics`` (a third-party check): its gates are then
    matched against the stored rows after the run, and for ``not_applicable``, which any check
    stores when it does not apply to the audited inputs.
    """
    from mlsafety.audit._check import CHECKS, NOT_APPLICABLE

    declared: tuple[str, ...] = tuple(getattr(CHECKS.get(check), "metrics", ()) or ())
    if not declared or metric == NOT_APPLICABLE or any(fnmatch.fnmatchcase(metric, p) for p in declared):
        return None
    for old, new in RENAMED_METRICS.items():
        if metric == old or metric.endswith("_" + old):
            stem = metric[: len(metric) - len(old)]
            names = [f"'{stem}{n}'" for n in new]
            hint = _RENAMED_HINTS.get(old, " or ".join(["{}"] * len(names))).format(*names)
            return f"metric {metric!r} was renamed; use {hint}"
    close = difflib.get_close_matches(metric, _candidates(metric, declared), n=1, cutoff=0.75)
    guess = f"did you mean {close[0]!r}? Its" if close else "its"
    return f"check {check!r} stores no metric {metric!r}; {guess} metrics: {', '.join(declared)}"


def _candidates(metric: str, patterns: Sequence[str]) -> list[str]:
    """Concrete names for a close-match search: each pattern's ``*`` filled with a run of the
    metric's own ``_``-separated words, never all of them (``*_auroc`` and ``msp_aurox`` give
    ``msp_auroc``)."""
    words = metric.split("_")
    runs = ["_".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1) if j - i < len(words)]
    out: list[str] = []
    for p in patterns:
        if p.count("*") == 1:
            out += [p.replace("*", run) for run in runs]
        elif "*" not in p:
            out.append(p)
    return out


def evaluate_gates(
    rows: Sequence[StoredRow], fail_under: Mapping[str, float], fail_over: Mapping[str, float]
) -> list[GateFailure]:
    """Every violated bound.

    Raises:
        InputError: a gate whose metric is stored as not measured (a not-applicable or ``--budget`` row of its
            check and hazard), with that row's reason: the gate cannot pass on a number never measured. A
            pattern over hazards fails so too when any hazard it matches is stored as not measured, even
            where others were measured.
        UnknownNameError: a gate that matches no stored metric.
    """
    failures: list[GateFailure] = []
    for kind, gates in (("fail_under", fail_under), ("fail_over", fail_over)):
        for text, bound in gates.items():
            key = parse_gate_key(text)
            matched = [r for r in rows if key.matches(r)]
            if not matched and (unmeasured := _not_measured(key, rows)):
                r, more = unmeasured[0], f" (and {len(unmeasured) - 1} more)" if len(unmeasured) > 1 else ""
                raise InputError(
                    f"gate {text!r} fails: its metric is stored as not measured ({r.hazard}: "
                    f"{r.params.get('reason', r.metric)}){more}; no bound holds on a number never measured, so "
                    "measure it or remove the gate"
                )
            if not matched:
                raise UnknownNameError(
                    f"gate {text!r} matches no stored metric; `mlsafety runs show RUN_ID` lists the metric keys"
                )
            if not isinstance(key.hazard, Hazard):
                missing = _unmeasured_among(key, matched, rows)
                if missing:  # a pattern over hazards bounds every one it names, the unmeasured ones too
                    r, more = missing[0], f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    raise InputError(
                        f"gate {text!r} fails: it bounds {len(matched)} measured hazard(s), but {r.hazard} is stored "
                        f"as not measured ({r.params.get('reason', r.metric)}){more}; no bound holds on a number "
                        "never measured, so measure it or narrow the pattern to the measured hazards"
                    )
            for r in matched:
                bad = r.value < bound if kind == "fail_under" else r.value > bound
                if bad:
                    failures.append(GateFailure(r.key, r.value, bound, kind))
    return failures


def _not_measured(key: GateKey, rows: Sequence[StoredRow]) -> list[StoredRow]:
    """The decision rows stored in place of the metric ``key`` gates: of its check and hazard, saying why no figure
    exists (:data:`~mlsafety.audit._check.NOT_APPLICABLE`, or what ``--budget`` left out)."""
    from mlsafety.audit._budget import BUDGET_NOT_MEASURED
    from mlsafety.audit._check import DECISION, NOT_APPLICABLE

    return [
        r
        for r in rows
        if r.metric in (NOT_APPLICABLE, BUDGET_NOT_MEASURED)
        and r.kind == DECISION
        and (dataclasses.replace(key, metric=r.metric).matches(r) or _covers(key, r))
    ]


def _unmeasured_among(key: GateKey, matched: Sequence[StoredRow], rows: Sequence[StoredRow]) -> list[StoredRow]:
    """The not-measured rows a pattern gate also bounds, beside the ``matched`` measured ones: those whose
    ``covers`` name the gate's metric (a corruption the deadline left out; not the deployment row, which stands
    for the expected escaped-failure rate alone, under ``defence-in-depth/*/escaped_failure_rate``)."""
    measured = {r.hazard for r in matched}
    return [r for r in _not_measured(key, rows) if r.hazard not in measured and _covers(key, r)]


def _covers(key: GateKey, row: StoredRow) -> bool:
    """Whether not-measured ``row`` stands for figures ``key`` bounds: its ``covers`` patterns (``HAZARD/METRIC``;
    a trojan scanner's figures under ``clean`` and the triggers), by default every metric of its own hazard."""
    if row.check != key.check:
        return False
    for pattern in row.params.get("covers") or [f"{row.hazard}/*"]:
        hazard, _, metric = str(pattern).rpartition("/")
        if not fnmatch.fnmatchcase(key.metric, metric):
            continue
        if isinstance(key.hazard, Hazard) and fnmatch.fnmatchcase(str(key.hazard), hazard):
            return True
        if not isinstance(key.hazard, Hazard) and (hazard == "*" or fnmatch.fnmatchcase(hazard, key.hazard)):
            return True
    return False


@dataclass(frozen=True)
class Comparison:
    """One metric in two runs.

    ``direction`` is +1 when higher is better, -1 when lower is better, None when the check does
    not say.
    """

    key: str
    a: StoredRow
    b: StoredRow
    direction: int | None = None

    @property
    def delta(self) -> float:
        return self.b.value - self.a.value

    def _half_widths(self) -> tuple[float, float] | None:
        if None in (self.a.ci_low, self.a.ci_high, self.b.ci_low, self.b.ci_high):
            return None
        return (self.a.ci_high - self.a.ci_low) / 2, (self.b.ci_high - self.b.ci_low) / 2  # type: ignore[operator]

    @property
    def intervals_overlap(self) -> bool | None:
        """Whether the two 95% intervals overlap (None when either number has no interval)."""
        if self._half_widths() is None:
            return None
        return not (self.a.ci_high < self.b.ci_low or self.b.ci_high < self.a.ci_low)  # type: ignore[operator]

    @property
    def significant(self) -> bool:
        """Changed by more than the intervals allow.

        The two runs are independent estimates, so the 95% half-width of their difference is about
        ``sqrt(h_a^2 + h_b^2)``; a change larger than that is flagged. (Non-overlapping intervals
        would be a far stricter test, at about the 0.6% level, and would miss real regressions.)
        Numbers without intervals are flagged whenever they differ.
        """
        halves = self._half_widths()
        if halves is None:
            return self.delta != 0
        return abs(self.delta) > math.hypot(*halves)

    @property
    def verdict(self) -> str:
        """``""`` (no real change), ``"better"``, ``"worse"`` or ``"changed"`` (direction unknown)."""
        if not self.significant:
            return ""
        if self.direction is None:
            return "changed"
        return "better" if self.delta * self.direction > 0 else "worse"


def compare_rows(a: Sequence[StoredRow], b: Sequence[StoredRow]) -> list[Comparison]:
    """Metrics present in both runs, in run A's order, with each metric's direction where known."""
    by_key = {r.key: r for r in b}
    return [Comparison(r.key, r, by_key[r.key], metric_direction(r, a)) for r in a if r.key in by_key]


def metric_direction(row: StoredRow, rows: Sequence[StoredRow]) -> int | None:
    """+1 / -1 / None for ``row``'s metric, from its check's declarations and scorecard headlines."""
    from mlsafety.audit._check import CHECKS

    if row.check not in CHECKS:
        return None
    cls = CHECKS.get(row.check)
    if row.metric in getattr(cls, "lower_is_better", ()):
        return -1
    if row.metric in getattr(cls, "higher_is_better", ()):
        return 1
    for h in cls.headlines([r for r in rows if r.check == row.check]):
        if h.row.metric == row.metric:
            return 1 if h.higher_is_better else -1
    return None
