"""An emergent-capability monitor: at which checkpoint does a capability appear, and what moved first?

Given a model's checkpoints and a probe task that says, per example, whether the model solves it,
:func:`detect_emergence` reports the first step from which the probe accuracy stays above a
threshold with 95% confidence (the exact Clopper-Pearson lower bound above it at that checkpoint
and at every later one), after a checkpoint at which it was confidently below (upper bound below the
threshold): a capability present from the start has not emerged. The step's interval is a
percentile bootstrap over the probe's examples (Efron & Tibshirani 1993): the examples are
resampled, the rule is applied again to the resampled accuracies, and the 2.5% and 97.5% quantiles
of the resulting steps are reported. :func:`leading_indicators` locates, for any other series
(progress measures such as a weight norm or Nanda et al. 2023's restricted loss), the step at which
it moves: the least-squares single change point of a piecewise-constant fit (Hinkley 1970,
"Inference about the change-point in a sequence of random variables"), and says whether it comes
before the emergence step. Emergence in the sense of Wei et al. 2022 ("Emergent Abilities of Large
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
        An :class:`Emergence`.
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


def change_point(steps: Sequence[int], values: Sequence[float] | torch.Tensor) -> int:
    """The least-squares single change point of a series: the first step of its second segment.

    The split minimising the summed squared deviations of the two segments from their means
    (a piecewise-constant fit with one break; Hinkley 1970).

    Args:
        steps: ``(T,)`` steps, ``T >= 2``.
        values: ``(T,)`` values.
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    t = v.numel()
    if t < 2 or len(steps) != t:
        raise InputError(f"change_point needs at least 2 values, one per step; got {t} values, {len(steps)} steps")
    if not torch.isfinite(v).all():
        raise InputError("change_point got a non-finite value: drop or fill it first")
    c1, c2 = v.cumsum(0), v.pow(2).cumsum(0)
    i = torch.arange(1, t, dtype=torch.float64)  # size of the first segment
    left = c2[:-1] - c1[:-1].pow(2) / i
    right_sum, right_sq = c1[-1] - c1[:-1], c2[-1] - c2[:-1]
    right = right_sq - right_sum.pow(2) / (t - i)
    split = int((left + right).argmin()) + 1
    return int(steps[split])


@dataclass(frozen=True)
class Indicator:
    """When a progress measure moved: its change point, and whether that precedes emergence."""

    name: str
    step: int
    precedes: bool | None


def leading_indicators(
    steps: Sequence[int], measures: Mapping[str, Sequence[float] | torch.Tensor], emergence: Emergence
) -> list[Indicator]:
    """The change point of each progress-measure series and whether it comes before the emergence step.

    Args:
        steps: the checkpoint steps (as in ``emergence``).
        measures: series by name, one value per step.
        emergence: the output of :func:`detect_emergence`; ``precedes`` is None when nothing emerged.

    Returns:
        One :class:`Indicator` per measure, earliest first.
    """
    out = []
    for name, values in measures.items():
        cp = change_point(steps, values)
        precedes = None if emergence.step is None else cp < emergence.step
        out.append(Indicator(name, cp, precedes))
    return sorted(out, key=lambda r: r.step)


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
