"""Helpers shared by the built-in checks (a ``_`` module: the package does not load it as a check).

* :func:`bind`: a task's work as a closure over its arguments, ``Task(key, bind(self._task, ctx, h))``
  (a lambda in a comprehension would see only the loop's last values).
* :func:`params_of`: a check's parameters as this audit runs it, or its defaults when it is not part
  of the audit (a hazard provider needs them either way: any check may ask for any hazard).
* :func:`metric_name`: the one way a metric name folds an identity (a noise level, an ensemble
  member, a scanner, a detector): ``metric_name("certified_accuracy_sigma", 0.25)`` is
  ``certified_accuracy_sigma_0_25``. Names are built, never parsed back: a view reads the identity
  from the row's params, or builds the name it looks for from them.
* :func:`truncation_rows`: the warning row of a text hazard (texts cut at the model's maximum length).
* :func:`require_int`, :func:`require_number`, :func:`require_names`: a check's parameter refused in one line
  when the audit is planned (from ``tasks``), before its run is stored, instead of by the library once a task runs.
* :class:`ScoreCache`: the library's OOD score cache bound to the audit's shared forward outputs
  (each of the ``ood``, ``ood-basic``, ``selective`` checks makes one; within a check, every detector
  is fitted once and every hazard scored once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlsafety.audit._check import COUNT, TRUNCATED, Row, TaskResult
from mlsafety.core import Hazard, InputError
from mlsafety.monitoring import ood

if TYPE_CHECKING:
    from mlsafety.audit._check import Check
    from mlsafety.audit._context import AuditContext

__all__ = [
    "ScoreCache",
    "bind",
    "metric_name",
    "params_of",
    "require_int",
    "require_names",
    "require_number",
    "truncation_rows",
]


def bind(fn: Callable[..., TaskResult], *args: Any) -> Callable[[], TaskResult]:
    """``fn(*args)`` as a task's argument-free ``run`` (the arguments are bound now, not at call time).

    Example:
        >>> tasks = [Task(str(h), bind(self._hazard_task, ctx, h)) for h in hazards]
    """
    return lambda: fn(*args)


def params_of(ctx: AuditContext, check: type[Check]) -> dict[str, Any]:
    """The parameters of ``check`` in this audit: its own when the audit runs it (over its defaults),
    else its defaults, with its quick profile when the audit is quick.

    Args:
        ctx: the audit's context (``ctx.check_params``, ``ctx.quick``).
        check: the check's class (registered, so it has a ``name``).
    """
    merged = dict(check.defaults)
    if check.name in ctx.check_params:
        merged.update(ctx.check_params[check.name])
    elif ctx.quick:
        merged.update(check.quick)
    return merged


def require_int(check: str, params: Mapping[str, Any], key: str, least: int) -> int:
    """``params[key]`` as an integer at least ``least``, or one line naming the check, key and bound."""
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise InputError(f"{check}: {key} must be an integer >= {least}, got {v!r}")
    return v


def require_number(
    check: str, params: Mapping[str, Any], key: str, low: float, high: float, open_low: bool = False,
    open_high: bool = False, value: Any = None,
) -> float:  # fmt: skip
    """``params[key]`` (or ``value``, an element of it) as a finite number in the interval from ``low`` to
    ``high`` (each end open or closed), or one line naming the check, key and interval."""
    v = params[key] if value is None else value
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise InputError(f"{check}: {key} must be a number in {interval}, got {v!r}")
    return float(v)


def require_names(
    check: str, params: Mapping[str, Any], key: str, example: str, single: bool = True, unique: bool = True
) -> list[str]:
    """``params[key]`` as a non-empty list of names (one name alone too when ``single``; each at most once
    when ``unique``), or one line naming the check, key and an ``example`` of the form it takes. Whether a
    name is known is the caller's registry's to say (it suggests the nearest one)."""
    v = params[key]
    names = [v] if single and isinstance(v, str) else v
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{check}: {key} must be a non-empty list of names, e.g. {example}, got {v!r}")
    if unique and len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{check}: {key} lists {', '.join(map(repr, twice))} more than once; name each once")
    return list(names)


def metric_name(*parts: object) -> str:
    """A metric name that folds an identity: the parts joined by ``_``, floats written as ``{:g}``,
    and every ``-`` or ``.`` turned into ``_`` (``metric_name("broken_by", "apgd-ce")`` is
    ``broken_by_apgd_ce``; ``metric_name("denoised_certified_accuracy_sigma", 0.5)`` is
    ``denoised_certified_accuracy_sigma_0_5``).

    Build each family of names in one function of its check, from the identity the row's params
    also carry, so a view can rebuild a name to find a row and never has to parse one.
    """
    text = "_".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts)
    return text.replace("-", "_").replace(".", "_")


def truncation_rows(ctx: AuditContext, hazard: Hazard | str) -> list[Row]:
    """For a text model, the warning row of ``hazard``: how many of its texts the shared forward pass
    truncated at the model's maximum length (:data:`~mlsafety.audit._check.TRUNCATED`, a count, also
    when it is 0); none for an image model."""
    if ctx.modality != "text":
        return []
    out, n = ctx.outputs(hazard), len(ctx.hazard(hazard))
    limit = ctx.model.text_max_length  # what texts are cut to: the tokenizer's and the model's limits
    return [Row.exact(str(Hazard.parse(hazard)), TRUNCATED, float(out.truncated), COUNT, n, max_length=limit)]


class ScoreCache(ood.ScoreCache):
    """The library's :class:`~mlsafety.monitoring.ood.ScoreCache` bound to an audit: detectors fitted on
    ``ctx.data.fit`` (from its shared forward outputs) on first use, inside a task; scores keyed by
    hazard, from the hazard's inputs and shared forward outputs. With training data, a detector fitted on
    held-out data by its method (``temperature-msp``) is fitted on the validation data.

    Args:
        ctx: the audit's context.
        names: detector registry names (each at most once).
        params: hyper-parameters by detector name.
    """

    def __init__(self, ctx: AuditContext, names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None):
        if len(set(names)) != len(names):
            raise InputError(f"detectors are listed more than once: {list(names)}")
        stray = sorted(set(params or {}) - set(names))
        if stray:
            raise InputError(
                f"detector parameters are given for {', '.join(map(repr, stray))}, which this check does not run "
                f"(it runs {', '.join(names)}); fix the name or drop its parameters"
            )
        for name in names:  # each detector's hyper-parameters are checked when the audit is planned
            ood.DETECTORS.create(name, **dict((params or {}).get(name, {})))
        fit = ctx.data.fit
        val = ctx.data.val if ctx.data.train is not None else None  # held out from the fit data only then
        super().__init__(
            ctx.model, fit, list(names), params, inputs=lambda h: (ctx.hazard(h).x, ctx.outputs(h)),
            batch_size=ctx.batch_size, fit_outputs=lambda: ctx.outputs_for(fit), fit_labels=fit.y,
            held_out=val, held_out_outputs=None if val is None else (lambda: ctx.outputs_for(val)),
            held_out_labels=None if val is None else val.y,
        )  # fmt: skip
        self.ctx = ctx

    def fit_until(self, order: Callable[[list[str]], Iterable[str]], clean: str) -> list[str]:
        """Fit the detectors one at a time, each with its scores of the input set ``clean``, in the order
        ``order`` yields them (under ``--budget``: :func:`~mlsafety.audit._budget.until_deadline`, so a unit is
        one detector's fit and clean scores), and keep only those (in :attr:`names` order). Returns the names
        dropped. A detector fitted alone gives what it gives fitted with the others (each reads the same
        shared outputs)."""
        outputs = self._fit_outputs() if callable(self._fit_outputs) else self._fit_outputs
        x, out = self._source(clean)
        fitted: dict[str, ood.Detector] = {}
        scores: dict[str, Any] = {}
        for name in order(list(self.names)):
            spec = self._specs[self.names.index(name)]
            det = ood.DETECTORS.create(spec, **self.params[name]) if isinstance(spec, str) else spec
            if self.fits_held_out(det):
                self.fit_on_held_out([det])
            else:
                labels = self._fit_labels
                ood.fit_detectors([det], self.model, self.fit_data, self.batch_size, outputs=outputs, labels=labels)
            scores[name] = next(iter(ood.score_detectors([det], self.model, x, self.batch_size, outputs=out).values()))
            fitted[name] = det
        dropped = [n for n in self.names if n not in fitted]
        keep = [i for i, n in enumerate(self.names) if n in fitted]
        self._specs = [self._specs[i] for i in keep]
        self.names = [self.names[i] for i in keep]
        self._detectors = [fitted[n] for n in self.names]
        for n in self.names:
            self.info[n] = {**fitted[n].stored_params(), **self._fitted_on(fitted[n]), **self.info[n]}
        self._scores[clean] = {n: scores[n].cpu() for n in self.names}
        return dropped
