"""Per-input bookkeeping of a protected system: did the model fail, did the monitor flag it.

For every hazard (``clean``, ``corruption/<name>/<severity>``, ``adversarial/<attack>/<eps>``,
``ood/<dataset>``, ...) each input ends in one of four cells:

=============  =====================  ==========================
               flagged by the monitor  not flagged
=============  =====================  ==========================
model fails    caught                 **escaped failure**
model correct  false alarm            served correctly
=============  =====================  ==========================

A failure is a wrong label; for an out-of-distribution input (label ``-1``) every answer is a
failure, since no label is right, so only a flag prevents harm. The residual risk of the whole
"Swiss cheese" of protections under a hazard is its escaped-failure rate.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from mlsafety.core import InputError
from mlsafety.metrics import Estimate, clopper_pearson, proportion

K = TypeVar("K", bound=Hashable)


def failures(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the model fails on input i when ``pred[i] != labels[i]`` or the label is ``-1`` (OOD).

    Args:
        pred: (N,) predicted classes, or (N, K) logits.
        labels: (N,) true labels, ``-1`` for out-of-distribution inputs.
    """
    if pred.ndim == 2:
        pred = pred.argmax(dim=1)
    labels = labels.to(pred.device)
    if pred.shape != labels.shape:
        raise InputError(f"{pred.shape[0]} predictions but {labels.shape[0]} labels")
    return (labels < 0) | (pred != labels)


@dataclass(frozen=True)
class Outcome:
    """What happened to every input of one hazard.

    Args:
        failed: (N,) bool, the model's answer was wrong (always true for OOD inputs).
        flagged: (N,) bool, the monitor flagged the input.
    """

    failed: torch.Tensor
    flagged: torch.Tensor

    def __post_init__(self) -> None:
        if self.failed.shape != self.flagged.shape or self.failed.ndim != 1:
            raise InputError(f"failed {tuple(self.failed.shape)} and flagged {tuple(self.flagged.shape)} must be (N,)")
        if self.failed.numel() == 0:
            raise InputError("an outcome needs at least one input")
        object.__setattr__(self, "failed", self.failed.detach().bool().cpu())
        object.__setattr__(self, "flagged", self.flagged.detach().bool().cpu())

    @property
    def n(self) -> int:
        return int(self.failed.numel())

    @property
    def escaped(self) -> torch.Tensor:
        """(N,) bool: failed and not flagged."""
        return self.failed & ~self.flagged

    def failure_rate(self) -> Estimate:
        """Share of inputs the model gets wrong (before the monitor), exact interval."""
        return proportion(self.failed)

    def caught_share(self) -> Estimate | None:
        """Share of the failures the monitor flags (None when there is no failure)."""
        return proportion(self.flagged[self.failed]) if bool(self.failed.any()) else None

    def escaped_failure_rate(self) -> Estimate:
        """Share of all inputs that fail and are not flagged: the residual risk, exact interval."""
        return proportion(self.escaped)

    def false_alarm_rate(self) -> Estimate | None:
        """Share of the correct answers the monitor flags (None when no answer is correct, e.g. OOD)."""
        ok = ~self.failed
        return proportion(self.flagged[ok]) if bool(ok.any()) else None

    def caught_rate(self) -> float:
        """Share of all inputs that fail and are flagged (the middle layer of the Swiss-cheese bar)."""
        return float((self.failed & self.flagged).double().mean())

    def worst_case(self, other: Outcome) -> Outcome:
        """Per input, the worse of two outcomes for the same inputs (an escape beats a catch beats a
        correct answer): what an attacker who may pick either attack per input achieves."""
        if other.n != self.n:
            raise InputError(f"outcomes cover {self.n} and {other.n} inputs; they must cover the same inputs")
        rank_a, rank_b = _severity_rank(self), _severity_rank(other)
        take_b = rank_b > rank_a
        return Outcome(torch.where(take_b, other.failed, self.failed), torch.where(take_b, other.flagged, self.flagged))


def _severity_rank(o: Outcome) -> torch.Tensor:
    # 3 escaped, 2 caught, 1 false alarm, 0 served correctly
    return torch.where(o.failed, torch.where(o.flagged, 2, 3), torch.where(o.flagged, 1, 0))


def expected_escaped_rate(
    outcomes: Mapping[K, Outcome], exposure: Mapping[K, float], confidence: float = 0.95
) -> Estimate:
    """Deployment's expected escaped-failure rate: ``sum_h w_h * e_h`` with exposure weights normalised.

    ``exposure[h]`` is how often deployment meets hazard ``h`` (any non-negative scale; the weights
    are divided by their sum). The interval is conservative and needs no resampling: each hazard's
    exact (Clopper-Pearson) interval at confidence ``1 - (1 - confidence) / H`` (Bonferroni over the
    ``H`` hazards with positive weight), combined with the weights; all of them hold at once with
    probability at least ``confidence``, and then so does the weighted sum. Hazards are keys of one
    kind in both mappings (typed :class:`~mlsafety.core.Hazard` values, or names).

    Returns:
        An :class:`~mlsafety.metrics.Estimate` whose ``n`` is the total number of inputs behind it.
    """
    weights = {h: float(w) for h, w in exposure.items() if float(w) != 0.0}
    for h, w in weights.items():  # NaN passes every comparison and inf / inf is NaN: both made a NaN estimate
        if not math.isfinite(w) or w < 0:
            raise InputError(f"exposure weight of {str(h)!r} must be a finite number >= 0, got {w}")
    missing = sorted(str(h) for h in set(weights) - set(outcomes))
    if missing:
        known = ", ".join(str(h) for h in outcomes)
        raise InputError(f"exposure names hazard {missing[0]!r}, which was not measured; measured: {known}")
    total = sum(weights.values())
    if total <= 0:
        raise InputError("exposure weights must include at least one positive weight")
    level = 1.0 - (1.0 - confidence) / len(weights)
    value = lo = hi = 0.0
    n = 0
    for h, w in weights.items():
        o = outcomes[h]
        k = int(o.escaped.sum())
        a, b = clopper_pearson(k, o.n, level)
        value += w / total * k / o.n
        lo += w / total * a
        hi += w / total * b
        n += o.n
    return Estimate(value, min(lo, value), max(hi, value), n)
