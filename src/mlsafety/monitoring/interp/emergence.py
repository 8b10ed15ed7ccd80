"""An emergent-capability monitor: at which checkpoint does a capability appear, and what moved first?

Given a model's checkpoints and a probe task that says, per example, whether the model solves it,
:func:`detect_emergence` reports the first step from which the probe accuracy stays above a
threshold with 95% confidence (the exact Clopper-Pearson lower bound above it at that checkpoint
and at every later one), after a checkpoint at which it was confidently below (upper bound below the
threshold): a capability present from the start has not emerged. The step's interval is a
percentile bootstrap over the probe's examples (Efron & Tibshirani 1993): the examples are
resampled, the rule is applied again to the resampled accuracies, and the 2.5% and 97.5% quantiles
of the resulting steps are reported. :func:`leading_indicators` dates the probe accuracy and any
other series (progress measures such as a weight norm or Nanda et al. 2023's restricted loss) with
one estimator, the least-squares single change point of a piecewise-constant fit (Hinkley 1970,
"Inference about the change-point in a sequence of random variables"), and reports each measure's
lead over the accuracy with a bootstrap interval; a measure precedes when that interval lies above 0.
All intervals here are conditional on one training run: grokking time also varies with the seed,
which only repeated runs measure. Emergence in the sense of Wei et al. 2022 ("Emergent Abilities of Large
Language Models") is measured here over training steps, as in grokking (Power et al. 2022).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlsafety.core import InputError, generator
from mlsafety.metrics import Estimate, clopper_pearson_lower, proportion


@dataclass(frozen=True)
class Emergence:
    """Where a capability emerged.

    Attributes:
        step: the first checkpoint step from which the capability is confidently present, or None.
        ci_low, ci_high: 95% bootstrap interval of ``step`` (None when it did not emerge).
        emerged_share: share of bootstrap resamples in which it emerged at all.
        accuracy: the probe accuracy with its exact interval at every checkpoint.
        steps: the checkpoint steps.
        threshold: the accuracy that counts as "capable".
    """

    step: int | None
    ci_low: int | None
    ci_high: int | None
    emerged_share: float
    accuracy: list[Estimate]
    steps: list[int]
    threshold: float

    @property
    def emerged(self) -> bool:
        """Whether the capability emerged."""
        return self.step is not None


def _first_emergence(lower: torch.Tensor, upper: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per row of ``(B, T)`` bounds: the first index of the final run of ``lower > threshold`` that
    follows an index with ``upper < threshold``; ``-1`` where there is none."""
    present = lower > threshold
    absent = upper < threshold
    t = present.shape[1]
    # the final run of "present": the index after the last checkpoint that is not present
    not_present = ~present
    idx = torch.arange(t).expand_as(present)
    last_gap = torch.where(not_present, idx, torch.full_like(idx, -1)).max(1).values
    start = last_gap + 1
    any_absent_before = (absent & (idx < start[:, None])).any(1)
    ok = (start < t) & any_absent_before
    return torch.where(ok, start, torch.full_like(start, -1))


def _bounds(k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided 95% Clopper-Pearson bounds for counts ``k`` of ``n`` (any shape)."""
    lower = clopper_pearson_lower(k, n, 0.025)
    upper = 1 - clopper_pearson_lower(n - k, n, 0.025)
    return lower, upper


def detect_emergence(
    steps: Sequence[int],
    outcomes: torch.Tensor,
    threshold: float = 0.5,
    n_boot: int = 200,
    seed: int = 0,
) -> Emergence:
    """The step at which a capability emerges, from per-checkpoint per-example outcomes.

    Args:
        steps: increasing checkpoint steps ``(T,)``.
        outcomes: ``(T, N)`` bool (or 0/1): whether checkpoint ``t`` solves probe example ``n``.
        threshold: accuracy, in (0, 1), above which the model counts as capable.
        n_boot: bootstrap resamples of the examples for the step's interval.
        seed: seed of the resamples.

    Returns:
        An :class:`Emergence`. Its interval resamples the probe examples of one run's checkpoints: it is
        conditional on that run and holds no seed-to-seed variation of when the capability appears
        (for grokking that variation is real; measure it over several training seeds).
    """
    steps = [int(s) for s in steps]
    out = torch.as_tensor(outcomes)
    if out.ndim != 2 or out.shape[0] != len(steps):
        raise InputError(f"outcomes must be (checkpoints={len(steps)}, examples), got {tuple(out.shape)}")
    if out.shape[1] == 0:
        raise InputError("outcomes hold no probe examples: give at least one example per checkpoint")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise InputError("steps must be strictly increasing")
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie in (0, 1), got {threshold}")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    out = out.bool().cpu()
    n = out.shape[1]
    k = out.sum(1)
    lower, upper = _bounds(k, n)
    first = int(_first_emergence(lower[None], upper[None], threshold)[0])
    g = generator(seed, "emergence", n)
    counts = torch.stack(
        [torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n) for _ in range(n_boot)]
    ).double()  # (B, N) times each example is drawn
    kb = counts @ out.double().T  # (B, T)
    lb, ub = _bounds(kb.round().long(), n)
    boot = _first_emergence(lb, ub, threshold)
    hit = boot[boot >= 0]
    share = float(hit.numel()) / n_boot
    accuracy = [proportion(int(ki), n) for ki in k]
    if first < 0:
        return Emergence(None, None, None, share, accuracy, steps, threshold)
    if hit.numel():
        boot_steps = torch.tensor(steps, dtype=torch.float64)[hit]
        q = torch.quantile(boot_steps, torch.tensor([0.025, 0.975], dtype=torch.float64))
        lo = min(_snap(float(q[0]), steps, down=True), steps[first])
        hi = max(_snap(float(q[1]), steps, down=False), steps[first])
    else:
        lo = hi = steps[first]
    return Emergence(steps[first], lo, hi, share, accuracy, steps, threshold)


def _snap(value: float, steps: list[int], down: bool) -> int:
    """The checkpoint step at or below (``down``) / at or above ``value``."""
    if down:
        return max(s for s in steps if s <= value + 1e-9)
    return min(s for s in steps if s >= value - 1e-9)


def _change_index(v: torch.Tensor) -> torch.Tensor:
    """Per row of ``(B, T)`` values: the index of the first value of the least-squares second segment."""
    t = v.shape[1]
    c1, c2 = v.cumsum(1), v.pow(2).cumsum(1)
    i = torch.arange(1, t, dtype=torch.float64)  # size of the first segment
    left = c2[:, :-1] - c1[:, :-1].pow(2) / i
    right_sum, right_sq = c1[:, -1:] - c1[:, :-1], c2[:, -1:] - c2[:, :-1]
    right = right_sq - right_sum.pow(2) / (t - i)
    return (left + right).argmin(1) + 1


def _as_series(steps: Sequence[int], values: Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    t = v.numel()
    if t < 2 or len(steps) != t:
        raise InputError(f"{what} needs at least 2 values, one per step; got {t} values, {len(steps)} steps")
    if not torch.isfinite(v).all():
        raise InputError(f"{what} got a non-finite value: drop or fill it first")
    return v


def change_point(steps: Sequence[int], values: Sequence[float] | torch.Tensor) -> int:
    """The least-squares single change point of a series: the first step of its second segment.

    The split minimising the summed squared deviations of the two segments from their means
    (a piecewise-constant fit with one break; Hinkley 1970).

    Args:
        steps: ``(T,)`` steps, ``T >= 2``.
        values: ``(T,)`` values.
    """
    v = _as_series(steps, values, "change_point")
    return int(steps[int(_change_index(v[None])[0])])


def _residual_boot(v: torch.Tensor, n_boot: int, g: torch.Generator) -> torch.Tensor:
    """``(B, T)`` series: the piecewise-constant fit plus circular moving blocks of its residuals."""
    t = v.numel()
    cut = int(_change_index(v[None])[0])
    fit = torch.cat([v[:cut].mean().expand(cut), v[cut:].mean().expand(t - cut)])
    res = v - fit
    block = max(1, round(t ** (1 / 3)))
    n_blocks = -(-t // block)
    starts = torch.randint(0, t, (n_boot, n_blocks), generator=g)
    idx = (starts[:, :, None] + torch.arange(block)).reshape(n_boot, -1)[:, :t] % t
    return fit + res[idx]


@dataclass(frozen=True)
class Indicator:
    """When a progress measure moved, and by how much it led the probe accuracy's own change point.

    Attributes:
        name: the measure.
        step: its change point; ``ci_low``/``ci_high`` the 95% bootstrap interval.
        lead: the accuracy's change point minus ``step`` (positive: the measure moved first);
            ``lead_low``/``lead_high`` its 95% bootstrap interval.
        precedes: whether ``lead_low > 0``.
    """

    name: str
    step: int
    ci_low: int
    ci_high: int
    lead: int
    lead_low: int
    lead_high: int
    precedes: bool


@dataclass(frozen=True)
class Leads:
    """:func:`leading_indicators`' result: the accuracy's change point and each measure's lead over it.

    Attributes:
        accuracy_step: the probe accuracy's change point; ``accuracy_low``/``accuracy_high`` its 95%
            bootstrap interval over the probe examples.
        indicators: one :class:`Indicator` per measure, earliest first.
    """

    accuracy_step: int
    accuracy_low: int
    accuracy_high: int
    indicators: list[Indicator]


def leading_indicators(
    steps: Sequence[int],
    measures: Mapping[str, Sequence[float] | torch.Tensor],
    outcomes: torch.Tensor,
    n_boot: int = 200,
    seed: int = 0,
) -> Leads:
    """Each progress measure's change point and its lead over the probe accuracy's change point.

    Both are dated with the same estimator (:func:`change_point`), so a measure that merely mirrors
    the accuracy (or an affine map of it) leads by 0. A least-squares break is not invariant under
    non-linear maps: a convex one such as ``-log(accuracy)`` moves most near the start and is dated
    earlier, so compare measures on their natural scales and read a lead as "moved first on this
    scale", not as a mechanism. Intervals are percentile bootstraps (Efron & Tibshirani 1993): the
    accuracy's over the probe examples, each measure's over circular moving blocks (length
    ``round(T^(1/3))``) of the residuals of its one-break fit (the measures are aggregates with no
    examples to resample). Draw ``b`` of the accuracy is paired with draw ``b`` of each measure for the
    lead's interval. All intervals are conditional on the one training run the checkpoints come from:
    they hold no seed-to-seed variation.

    Args:
        steps: the checkpoint steps.
        measures: series by name, one value per step.
        outcomes: ``(T, N)`` per-checkpoint per-example probe outcomes (as for :func:`detect_emergence`).
        n_boot: bootstrap resamples.
        seed: seed of the resamples.

    Returns:
        A :class:`Leads`.
    """
    steps = [int(s) for s in steps]
    out = torch.as_tensor(outcomes)
    if out.ndim != 2 or out.shape[0] != len(steps) or out.shape[1] == 0:
        raise InputError(f"outcomes must be (checkpoints={len(steps)}, examples >= 1), got {tuple(out.shape)}")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    out = out.bool().cpu().double()
    n = out.shape[1]
    acc = _as_series(steps, out.mean(1), "the probe accuracy")
    g = generator(seed, "leads", n)
    counts = torch.stack(
        [torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n) for _ in range(n_boot)]
    ).double()
    acc_b = _change_index((counts @ out.T) / n)  # (B,)
    at = torch.tensor(steps, dtype=torch.float64)
    ref = change_point(steps, acc)
    rows = []
    for name, values in measures.items():
        v = _as_series(steps, values, f"measure {name!r}")
        cp = change_point(steps, v)
        cp_b = _change_index(_residual_boot(v, n_boot, g))
        lo, hi = _interval(at[cp_b], steps)
        lead_b = at[acc_b] - at[cp_b]
        q_lo = torch.quantile(lead_b, 0.025, interpolation="lower")
        q_hi = torch.quantile(lead_b, 0.975, interpolation="higher")
        lead = ref - cp
        lead_lo, lead_hi = min(int(q_lo), lead), max(int(q_hi), lead)
        rows.append(Indicator(name, cp, min(lo, cp), max(hi, cp), lead, lead_lo, lead_hi, lead_lo > 0))
    a_lo, a_hi = _interval(at[acc_b], steps)
    return Leads(ref, min(a_lo, ref), max(a_hi, ref), sorted(rows, key=lambda r: r.step))


def _interval(values: torch.Tensor, steps: list[int]) -> tuple[int, int]:
    q = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return _snap(float(q[0]), steps, down=True), _snap(float(q[1]), steps, down=False)


Checkpoint = Mapping[str, torch.Tensor] | Callable[[], nn.Module]


def probe_checkpoints(
    checkpoints: Sequence[tuple[int, Checkpoint]],
    probe: Callable[[nn.Module], torch.Tensor],
    model: nn.Module | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Run a probe task on every checkpoint: ``(steps, outcomes (T, N) bool)`` for :func:`detect_emergence`.

    Args:
        checkpoints: ``(step, state_dict)`` pairs (loaded into ``model``), or ``(step, loader)``
            pairs whose loader returns the checkpoint's model.
        probe: maps a model (in eval mode) to per-example correctness ``(N,)``, the same examples
            for every checkpoint.
        model: the module that state dicts are loaded into; its weights and mode are restored after.
    """
    if not checkpoints:
        raise InputError("give at least one checkpoint")
    saved = None if model is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = None if model is None else model.training
    steps, rows = [], []
    try:
        for step, ckpt in checkpoints:
            if isinstance(ckpt, Mapping):
                if model is None:
                    raise InputError("state-dict checkpoints need model=: the module to load them into")
                model.load_state_dict(ckpt)
                m = model
            else:
                m = ckpt()
            m.eval()
            with torch.no_grad():
                rows.append(torch.as_tensor(probe(m)).reshape(-1).bool().cpu())
            steps.append(int(step))
    finally:
        if model is not None and saved is not None:
            model.load_state_dict(saved)
            model.train(bool(was_training))
    if len({r.numel() for r in rows}) != 1:
        raise InputError("the probe returned a different number of examples at different checkpoints")
    return steps, torch.stack(rows)
