"""What an audit will cost, and sample sizes that make it fit a time budget (``--budget``).

Before the first task the engine measures the audited model on a probe batch of test inputs: the
seconds per input of a forward pass, of a forward and backward pass (gradient with respect to the
input only), of each selected corruption, and of each configured attack (run on a few inputs).
Each check's cost is then a sum of those measured per-input costs times what the check does per
sample (its cost model below: attack runs per adversarial input, noise draws per certified input,
optimisation steps of the trigger search...). The estimate is what the user sees before the audit
starts ("about 4 min with these checks").

With a budget, the planner chooses each check's sample size ``n_i`` (a :class:`Knob`: a check
parameter such as the adversarial subset ``n`` or the certified ``num_inputs``, and the size of
the test set every check shares) so that the predicted total fits. A proportion's 95% interval is
about ``2 * 1.96 * sqrt(p (1 - p) / n)`` wide, so the planner minimises the sum of the worst-case
widths ``sum_i 1 / sqrt(n_i)`` under ``sum_i c_i n_i <= B`` (``c_i`` seconds per sample): the
Lagrange solution is ``n_i`` proportional to ``c_i ** (-2/3)``, clamped to ``[floor_i, configured_i]``.
Samples are cut where they are dear and where a cut widens the interval least, and a sample size is
never raised above what the profile configured. The engine re-plans the checks not yet run before
each check starts, scaling the predicted costs by how far the measured ones were off, so estimation
errors of the early checks are absorbed by the later ones.

When even every floor does not fit (or the measured speed falls behind the prediction on a loaded
machine), no check is cut whole: every task runs with a deadline (``AuditContext.deadline``, set by the
engine's ``_budgeted``). When a check starts it gets a share of what is left of the budget, weighted by
the square root of its predicted seconds (a dear check gets more, a cheap one is not starved); its tasks
share what is left of that equally over the tasks still to run, so a cheap task hands its time on. The
long loops inside the dear tasks stop at the deadline (:func:`until_deadline`): TTA methods and attack
settings, certified inputs (in chunks) and consistency attacks, the trojan scanners after Neural Cleanse,
the OOD detectors (fitted one at a time, the monitored and the quick ones first). A loop always runs its
first (headline) unit and starts another only when the longest unit of its kind seen so far still fits
before the deadline; rows carry the n they reached and a ``budget_stopped`` parameter saying so, and what
was not measured at all gets a :data:`BUDGET_NOT_MEASURED` row. Defence-in-depth measures only the hazards
already built (or cheap) under a budget. Without a budget there is no deadline and nothing changes.

Deviation: the cost models are per-check formulas kept in this module (a table by check name), not
declared by each check; a third-party check is costed as 0.3 s and its sizes are never cut (its tasks
can be). The Monte-Carlo counts of ``certified`` (``n0``, ``n``), the attack steps of ``tta`` and the
STRIP/ABS work of ``trojans`` have no knob: their loops stop at the deadline instead. A single unit of
work (one TTA attack of one method, one detector's fit, one corruption's severities, a Neural Cleanse
search at its floor) cannot stop inside, so a budget can still be overrun by the units every check needs
for its headline.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from mlsafety.audit._check import DECISION, Row
from mlsafety.core import Classifier, InputError, MlsafetyError

TEST = "#test"
"""The knob of the shared test-set size (every check reads the test set)."""

RESERVE = 0.05
"""Share of the budget kept for what no cost model covers (planning, the report, start-up)."""

TEST_FLOOR = 100
"""The fewest test inputs a budget keeps (every check reads them; accuracy is then known to about +-0.1)."""

PROBE_INPUTS = 64
"""Test inputs the model is timed on."""

ATTACK_PROBE = 8
"""Inputs each configured attack is run on (on a linear stand-in) to count what it forwards."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``5m``, ``1.5m``, ``1h`` or a plain number of seconds.

    Raises:
        InputError: anything else, or a duration under 5 s.
    """
    m = _DURATION.match(str(text).lower())
    if m is None:
        raise InputError(f"--budget {text!r} is not a duration; use e.g. 90s, 5m or 1h")
    seconds = float(m.group(1)) * {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if seconds < 5:
        raise InputError(f"--budget {text!r} is under 5 seconds; no audit fits it, use e.g. 1m")
    return seconds


def fmt_duration(seconds: float) -> str:
    """``45 s``, ``4 min``, ``1.5 h``: how long, as a person would say it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Rates:
    """Measured seconds per input on the audited model (probe batch, the audit's batch size)."""

    forward: float
    backward: float
    corrupt: dict[str, float] = field(default_factory=dict)
    attack: dict[str, float] = field(default_factory=dict)


def _timed(fn: Callable[[], object], repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _attack_rows(make: Callable[[], Any], x: torch.Tensor, classes: int) -> float:
    """Inputs an attack forwards per attacked input, counted on a linear stand-in of the audited model's
    input shape (its own predictions as labels, so every input is attacked): what the attack costs
    depends on its steps and restarts, which the stand-in shows in milliseconds, not on the model."""
    g = torch.Generator().manual_seed(0)
    stand_in = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), classes))
    with torch.no_grad():
        for p in stand_in.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    stand_in.eval()
    xs = x[:ATTACK_PROBE].detach().cpu()
    with torch.no_grad():
        ys = stand_in(xs).argmax(dim=1)
    rows = [0]

    def count(_m: torch.nn.Module, _a: Any, out: torch.Tensor) -> None:
        rows[0] += int(out.shape[0])

    handle = stand_in.register_forward_hook(count)
    try:
        make().run(Classifier(stand_in), xs, ys, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return rows[0] / max(1, len(xs))


def measure_rates(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    corruptions: Sequence[str] = (),
    attacks: Mapping[str, Callable[[], Any]] | None = None,
) -> Rates:
    """Time the model on the probe inputs ``x`` (N, C, H, W): forward, forward + input gradient (each
    after a warm-up pass of the same shape), each corruption at severity 3; an attack (``attacks`` maps
    a name to a factory of the configured attack at a mid-grid eps) costs the inputs it forwards per
    attacked input (:func:`_attack_rows`) times the gradient rate. The model is left as it was."""
    x = x[:PROBE_INPUTS].to(model.device)
    y = y[: len(x)].to(model.device)
    n = max(1, len(x))
    with torch.inference_mode():
        model.logits(x)  # warm-up at the probe's shape (lazy initialisation, kernels)
        forward = _timed(lambda: model.logits(x)) / n
    params = [p for p in model.module.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)

        def grad() -> None:
            xi = x.detach().clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(model.logits(xi), y.clamp(min=0)).backward()

        grad()  # warm-up
        backward = _timed(grad) / n
    finally:
        for p in params:
            p.requires_grad_(True)
    from mlsafety.robustness import corruptions as corr

    g = torch.Generator().manual_seed(0)
    xc = x[:8].cpu()
    corrupt: dict[str, float] = {}
    for c in corruptions:
        t0 = time.perf_counter()
        try:
            corr.corrupt(xc, c, 3, generator=g)
        except MlsafetyError:  # not applicable to these images (saturate on grey): the check skips it too
            continue
        corrupt[c] = (time.perf_counter() - t0) / len(xc)
    attack_rates: dict[str, float] = {}
    for name, make in (attacks or {}).items():
        try:
            attack_rates[name] = _attack_rows(make, x, model.num_classes) * backward
        except MlsafetyError:  # refused for this model: the check says why when it runs; costed as 20 gradients
            continue
    return Rates(forward, backward, corrupt, attack_rates)


@dataclass(frozen=True)
class Sizes:
    """How many inputs each data source holds (after ``--max-samples``), and the number of classes."""

    test: int
    val: int
    train: int
    ood: int
    classes: int


@dataclass
class Knob:
    """A sample size the planner may cut: ``param`` of check ``check`` (or :data:`TEST`).

    ``unit`` is the predicted seconds per sample, ``value`` the configured (largest) size,
    ``floor`` the smallest the planner may choose; ``chosen`` is what it chose. ``planned`` is what the
    plan before the first task chose when re-planning during the run changed it (None when it did not).
    """

    check: str
    param: str
    value: int
    floor: int
    unit: float
    chosen: int = 0
    planned: int | None = None

    @property
    def width(self) -> float:
        """Worst-case (p = 1/2) width of a proportion's 95% interval at the chosen size."""
        return min(1.0, 2 * 1.96 * math.sqrt(0.25 / max(1, self.chosen)))  # a proportion's interval is within [0, 1]


@dataclass
class CheckCost:
    """A check's predicted seconds: ``fixed`` plus, for each knob, its unit cost times its size."""

    check: str
    fixed: float
    knobs: list[Knob] = field(default_factory=list)

    def seconds(self, chosen: bool = True) -> float:
        return self.fixed + sum(k.unit * (k.chosen if chosen else k.value) for k in self.knobs)


CostModel = Callable[[Mapping[str, Any], Sizes, Rates], CheckCost]
_MODELS: dict[str, CostModel] = {}


def cost_model(check: str) -> Callable[[CostModel], CostModel]:
    def deco(fn: CostModel) -> CostModel:
        _MODELS[check] = fn
        return fn

    return deco


class _NotAnInteger(Exception):
    """A cost model's parameter that is not an integer (``check_costs`` names the check)."""

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(key, value)
        self.key, self.value = key, value


def _int(p: Mapping[str, Any], key: str) -> int:
    """``p[key]`` as an integer; the checks' own planning refuses out-of-range values later, in their words."""
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _NotAnInteger(key, v)
    return v


def _list(v: Any) -> list[Any]:
    return [v] if isinstance(v, (str, int, float)) else list(v or [])


@cost_model("adversarial")
def _adversarial(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    per = sum(r.attack.get(a, 20 * r.backward) for a in _list(p["attacks"])) * int(p.get("#grid", 5))
    return CheckCost("adversarial", 1.0, [Knob("adversarial", "n", _int(p, "n"), 20, per)])


@cost_model("certified")
def _certified(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    sig = len(_list(p["sigmas"]))
    per = sig * (_int(p, "n0") + _int(p, "n")) * r.forward
    # the consistency test: per attacked input, each attack takes 10 steps, each a Monte-Carlo gradient of the
    # smoothed classifier over about 100 noise draws, and its result is re-certified with n draws
    per_attacked = sig * (1 + len(_list(p["attacks"]))) * (10 * 100 * r.backward + _int(p, "n") * r.forward)
    return CheckCost(
        "certified",
        1.0,
        [
            Knob("certified", "num_inputs", _int(p, "num_inputs"), 10, per),
            Knob("certified", "num_attacked", _int(p, "num_attacked"), 1, per_attacked),
        ],
    )


@cost_model("trojans")
def _trojans(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    scanners = _list(p["scanners"])
    seeds = _int(p, "n_seeds")
    fixed = 0.5
    if "strip" in scanners:
        fixed += 2 * min(200, s.test) * 64 * r.forward * seeds
    if "abs" in scanners:
        fixed += min(_int(p, "max_clean"), s.val) * 30 * r.backward
    for name in ("activation-clustering", "spectral-signatures"):
        if name in scanners:
            fixed += s.train * 0.5 * r.forward
    knobs = []
    # a scanner whose interval is its spread over seeds needs at least 2 (one that reads the training set
    # only when there is one); Neural Cleanse's interval is a bootstrap over classes and STRIP's is exact
    from mlsafety.monitoring.trojans import SCANNERS
    from mlsafety.monitoring.trojans.evaluate import needs_seed_spread

    seeded = [n for n in scanners if n in SCANNERS and needs_seed_spread(n) and ("train" not in SCANNERS.get(n).needs
              or s.train > 0)]  # fmt: skip
    least = 2 if seeded else 1
    if seeds > least:
        per_seed = fixed + (s.classes * 16 * _int(p, "nc_steps") * r.backward if "neural-cleanse" in scanners else 0)
        knobs.append(Knob("trojans", "n_seeds", seeds, least, per_seed / seeds))
    if "neural-cleanse" in scanners:
        per_step = seeds * s.classes * 16 * r.backward
        knobs.append(Knob("trojans", "nc_steps", _int(p, "nc_steps"), 20, per_step))
    return CheckCost("trojans", fixed, knobs)


@cost_model("transparency")
def _transparency(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    methods = len(_list(p["methods"]))
    modes = _list(p["sanity_modes"])
    per = methods * 40 * r.backward * (1 + 4 * len(modes)) + 50 * r.backward
    fixed = (_int(p, "vis_steps") * s.classes * r.backward if p["visualize"] else 0.0) + 1.0
    fixed += _int(p, "examples") * 4 * len(_list(p["grid_methods"])) * 40 * r.backward
    if "label" in modes:
        fixed += _int(p, "label_epochs") * s.val * 3 * r.backward
    return CheckCost("transparency", fixed, [Knob("transparency", "sanity_inputs", _int(p, "sanity_inputs"), 4, per)])


@cost_model("defence-in-depth")
def _defence(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    fixed = 1.0 + s.val * 2 * r.forward
    per = _int(p, "adaptive_steps") * 2 * r.backward * int(p.get("#grid", 5)) if p["adaptive"] else 0.0
    # its adaptive attack runs on the adversarial subset: the cost follows the adversarial n
    return CheckCost("defence-in-depth", fixed, [Knob("adversarial", "n", int(p.get("#n", 200)), 20, per)])


@cost_model("tta")
def _tta(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    methods = max(1, int(p.get("#methods", 3)))  # the engine derives it from the check's methods
    shifts = len(_list(p["corruptions"])) + 1
    per_batch = _int(p, "attack_steps") * _int(p, "batch_size") * r.backward * methods * len(_list(p["shares"]))
    per_batch *= len(_list(p["objectives"]))
    fixed = 1.0
    return CheckCost(
        "tta",
        fixed,
        [
            Knob(TEST, TEST, s.test, 0, shifts * methods * 2 * r.backward),
            Knob("tta", "attack_batches", _int(p, "attack_batches"), 1, per_batch),
        ],
    )


@cost_model("corruptions")
def _corruptions(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    names = _list(p.get("#corruptions", []))
    sevs = len(_list(p["severities"]))
    per = sum(r.corrupt.get(n, 0.0) + r.forward for n in names) * sevs
    return CheckCost("corruptions", 0.5, [Knob(TEST, TEST, s.test, 0, per)])


@cost_model("ood")
def _ood(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
    grad = int(p.get("#grad_detectors", 0))
    fixed = 1.0 + s.ood * (grad * r.backward)
    return CheckCost("ood", fixed, [Knob(TEST, TEST, s.test, 0, grad * r.backward)])


T = TypeVar("T")

_UNIT_SECONDS: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
"""Per audit context: the longest unit of work of each kind seen so far (what :func:`until_deadline` predicts)."""


def until_deadline(ctx: Any, items: Iterable[T], kind: str, first: int = 1) -> Iterator[T]:
    """The ``items`` in order, while the running task's deadline (``ctx.deadline``, set under ``--budget``)
    allows: after the first ``first`` items (a check's headline unit: 1; an optional one: 0) an item comes
    only when the longest unit of this ``kind`` seen so far in the run (none yet: the task's predicted seconds,
    ``ctx.task_estimate``) still fits before the deadline (the
    time between two requests of the loop, or until the loop returns from inside, is the unit's). Consume it
    lazily (a ``for`` loop). Without a deadline every item comes."""
    units = _UNIT_SECONDS.setdefault(ctx, {})
    for i, item in enumerate(items):
        need = units.get(kind, getattr(ctx, "task_estimate", 0.0))  # an unseen kind: the task's prediction
        if ctx.deadline is not None and i >= first and time.perf_counter() + need > ctx.deadline:
            return
        t0 = time.perf_counter()
        try:
            yield item
        finally:  # also when the loop returns from inside (the generator is closed after the unit's work)
            units[kind] = max(units.get(kind, 0.0), time.perf_counter() - t0)


BUDGET_NOT_MEASURED = "budget_not_measured"
"""The metric of a decision row saying what a task did not measure because its deadline (``--budget``) came
first; its ``reason`` says what, and how to get it (no budget)."""


def not_measured_row(hazard: str, what: str, covers: Sequence[str] = ()) -> Row:
    """The :data:`BUDGET_NOT_MEASURED` row of ``hazard``: ``what`` was not measured before the deadline.

    ``covers``: ``HAZARD/METRIC`` patterns (``fnmatch``, e.g. ``*/strip_*``) of the rows it stands for when they
    are not every metric of ``hazard`` (the gates' default), so that a gate on one of them fails saying it was
    not measured, rather than that no such metric exists or, for a pattern over hazards, passing on the measured
    ones alone.
    """
    why = f"{what}: not measured, the task's deadline (--budget) came first; run without --budget for them"
    extra: dict[str, Any] = {"covers": list(covers)} if covers else {}
    return Row.exact(hazard, BUDGET_NOT_MEASURED, 1.0, DECISION, reason=why, **extra)


def stopped_note(reached: int, planned: int, unit: str) -> dict[str, Any]:
    """Row parameters saying a loop stopped at the budget's deadline (empty when it did not)."""
    if reached >= planned:
        return {}
    return {"budget_stopped": f"{reached} of {planned} {unit} before the task's deadline (--budget)"}


def _default(check: str) -> CostModel:
    def model(p: Mapping[str, Any], s: Sizes, r: Rates) -> CheckCost:
        return CheckCost(check, 0.3)

    return model


def shared_cost(s: Sizes, r: Rates) -> CheckCost:
    """The one forward pass of every data source that the checks share."""
    floor = min(s.test, TEST_FLOOR)
    return CheckCost(
        "forward passes", (s.val + s.train + s.ood) * r.forward, [Knob(TEST, TEST, s.test, floor, r.forward)]
    )


def check_costs(params: Mapping[str, Mapping[str, Any]], s: Sizes, r: Rates) -> list[CheckCost]:
    """Every check's cost model evaluated (checks in ``params`` order), the shared passes first."""
    costs = [shared_cost(s, r)]
    for c, p in params.items():
        try:
            costs.append(_MODELS.get(c, _default(c))(p, s, r))
        except _NotAnInteger as e:  # costed before the checks plan: the same line they would give
            raise InputError(f"{c}: {e.key} must be an integer, got {e.value!r}") from None
    return costs


def _merge(costs: Sequence[CheckCost]) -> dict[tuple[str, str], Knob]:
    """One knob per (check, param): unit costs of the checks that share it are added."""
    out: dict[tuple[str, str], Knob] = {}
    for c in costs:
        for k in c.knobs:
            key = (k.check, k.param)
            if key in out:
                out[key].unit += k.unit
            else:
                out[key] = Knob(k.check, k.param, k.value, k.floor, k.unit)
    return out


def allocate(knobs: Sequence[Knob], available: float) -> bool:
    """Choose ``knob.chosen`` for every knob so ``sum(unit * chosen) <= available``, cutting by the
    ``n ~ unit ** (-2/3)`` rule (module docstring); True when it fits, False when even every floor
    does not (every knob is then at its floor)."""
    live = [k for k in knobs if k.unit > 0 and k.value > 0]
    for k in knobs:
        k.chosen = k.value
    if sum(k.unit * k.value for k in live) <= available:
        return True

    def sizes(lam: float) -> list[int]:
        return [max(min(k.floor, k.value), min(k.value, int(lam * k.unit ** (-2 / 3)))) for k in live]

    def cost(lam: float) -> float:
        return sum(k.unit * n for k, n in zip(live, sizes(lam), strict=True))

    lo, hi = 0.0, max(k.value * k.unit ** (2 / 3) for k in live) + 1
    for _ in range(80):
        mid = (lo + hi) / 2
        if cost(mid) <= available:
            lo = mid
        else:
            hi = mid
    for k, n in zip(live, sizes(lo), strict=True):
        k.chosen = n
    return cost(lo) <= available


@dataclass
class Plan:
    """What the audit is predicted to cost, and (with a budget) the sample sizes chosen to fit it."""

    costs: list[CheckCost]
    knobs: dict[tuple[str, str], Knob]
    budget: float | None
    fits: bool = True
    probe_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """Predicted seconds of every check and the shared passes at the chosen sizes."""
        total = sum(c.fixed for c in self.costs)
        total += sum(k.unit * k.chosen for k in self.knobs.values())
        return total

    def chosen(self, check: str, param: str) -> int | None:
        k = self.knobs.get((check, param))
        return None if k is None else k.chosen

    def sync(self) -> None:
        """Copy the chosen sizes of the merged knobs into every check's own knobs (what ``seconds`` reads)."""
        for c in self.costs:
            for k in c.knobs:
                k.chosen = self.knobs[(k.check, k.param)].chosen

    def cut(self) -> list[Knob]:
        """Knobs the budget cut below their configured size."""
        return [k for k in self.knobs.values() if k.chosen < k.value]


def make_plan(costs: list[CheckCost], budget: float | None, spent: float = 0.0) -> Plan:
    """Merge the knobs and (with ``budget``) allocate them to fit what is left of it after ``spent``."""
    knobs = _merge(costs)
    for k in knobs.values():
        k.chosen = k.value
    fits = True
    if budget is not None:
        fixed = sum(c.fixed for c in costs)
        fits = allocate(list(knobs.values()), budget * (1 - RESERVE) - spent - fixed)
    plan = Plan(costs, knobs, budget, fits)
    plan.sync()
    return plan


__all__ = [
    "BUDGET_NOT_MEASURED",
    "RESERVE",
    "TEST",
    "CheckCost",
    "Knob",
    "Plan",
    "Rates",
    "Sizes",
    "allocate",
    "check_costs",
    "cost_model",
    "fmt_duration",
    "make_plan",
    "measure_rates",
    "not_measured_row",
    "parse_duration",
    "stopped_note",
    "until_deadline",
]
