"""The defence-in-depth evaluation of a guarded classifier, from precomputed forward outputs.

:class:`DefenceInDepthEvaluator` is what the audit's ``defence-in-depth`` check calls: the caller
owns the forward passes and the detectors (this pillar imports no other), and hands over, per set
of inputs, the forward :class:`~mlsafety.core.Outputs` and a :data:`DetectorScores` function. The
evaluator

1. chooses the monitor on validation data only (:meth:`~DefenceInDepthEvaluator.choose`): every
   candidate of :func:`~mlsafety.systemic.candidate_monitors` at the false-alarm rate, scored by
   :func:`~mlsafety.systemic.validation_escape` on clean validation inputs and synthetic outliers;
2. per hazard, sorts every input into success, false alarm, caught or escaped failure
   (:meth:`~DefenceInDepthEvaluator.outcome`), and gives the rates with exact intervals
   (:meth:`HazardResult.estimates`);
3. for an adversarial hazard, adds the outcome under the monitor-aware attack (its inputs made by
   the caller with :class:`~mlsafety.systemic.MonitorAwareObjective`): the per-input worst case of
   both attacks is the adaptive escaped-failure rate (:meth:`~DefenceInDepthEvaluator.adaptive`).

Example:
    >>> ev = DefenceInDepthEvaluator(["energy"], scores, false_alarm_rate=0.05)
    >>> choice = ev.choose(ev.scored(val_x, val_out, val_y), ev.scored(out_x, out_out, out_y))
    >>> ev.outcome(test_x, test_out, test_y).escaped_failure_rate()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, Outputs
from mlsafety.metrics import Estimate
from mlsafety.systemic._monitor import Monitor
from mlsafety.systemic._outcomes import Outcome, failures
from mlsafety.systemic._select import ScoredSet, candidate_monitors, choose_monitor

DetectorScores = Callable[[torch.Tensor, Outputs, Sequence[str]], Mapping[str, torch.Tensor]]
"""``(x, outputs, names) -> {name: scores}``: each named detector's (N,) anomaly scores (higher =
more anomalous) of inputs ``x`` whose forward outputs are ``outputs``: keyed by the names (read by name), or
in the order of ``names`` under other keys (read by position)."""


@dataclass(frozen=True)
class MonitorChoice:
    """The monitor chosen on validation data, and every candidate's criterion by name
    (:func:`~mlsafety.systemic.validation_escape`, with its interval)."""

    monitor: Monitor
    criteria: dict[str, Estimate]


@dataclass(frozen=True)
class HazardResult:
    """What the guarded system does under one hazard.

    Attributes:
        outcome: every input's cell (failed, flagged) under the hazard's own inputs.
        adaptive: for an adversarial hazard, the per-input worst case of the hazard's attack and
            the monitor-aware attack (None when it was not run).
        adaptive_alone: the monitor-aware attack's own outcome (None when it was not run).
    """

    outcome: Outcome
    adaptive: Outcome | None = None
    adaptive_alone: Outcome | None = None

    @property
    def measured(self) -> Outcome:
        """The outcome an FMEA scores: the adaptive worst case when there is one."""
        return self.adaptive if self.adaptive is not None else self.outcome

    def estimates(self) -> dict[str, Estimate]:
        """The rates by metric name, each with an exact (Clopper-Pearson) 95% interval, in this
        order: ``failure_rate``, ``caught_share`` (when some input fails), ``escaped_failure_rate``,
        ``false_alarm_rate`` (when some answer is correct), ``adaptive_escaped_failure_rate``
        (when the adaptive attack ran)."""
        o = self.outcome
        found: dict[str, Estimate | None] = {
            "failure_rate": o.failure_rate(),
            "caught_share": o.caught_share(),
            "escaped_failure_rate": o.escaped_failure_rate(),
            "false_alarm_rate": o.false_alarm_rate(),
            "adaptive_escaped_failure_rate": None if self.adaptive is None else self.adaptive.escaped_failure_rate(),
        }
        return {k: v for k, v in found.items() if v is not None}


class DefenceInDepthEvaluator:
    """Chooses a monitor on validation data and measures the guarded classifier under hazards.

    Args:
        detectors: names of the candidate detectors (each tried alone and with the confidence part).
        scores: the detectors' scores from precomputed outputs (:data:`DetectorScores`).
        false_alarm_rate: the share of correct clean validation answers each candidate may flag.
        confidence_share: share of the false-alarm budget given to confidence in combined monitors.
        ood_share: the share of OOD inputs the choice expects (the outliers' weight in
            :func:`~mlsafety.systemic.validation_escape`).
    """

    def __init__(
        self,
        detectors: Sequence[str],
        scores: DetectorScores,
        false_alarm_rate: float = 0.05,
        confidence_share: float = 0.5,
        ood_share: float = 0.5,
    ) -> None:
        self.detectors = list(detectors)
        self.scores = scores
        self.false_alarm_rate = false_alarm_rate
        self.confidence_share = confidence_share
        self.ood_share = ood_share
        self.choice_: MonitorChoice | None = None

    # -- the monitor ---------------------------------------------------------------------------
    def scored(self, x: torch.Tensor, outputs: Outputs, labels: torch.Tensor) -> ScoredSet:
        """What every candidate sees of inputs ``x`` (forward ``outputs``, true ``labels``, -1 for OOD)."""
        scores = self.scores(x, outputs, self.detectors)
        if len(scores) != len(self.detectors):
            raise InputError(
                f"the detector scores function returned {len(scores)} score sets for {len(self.detectors)} detectors "
                f"({', '.join(self.detectors)}); it must return one per detector, in the order given"
            )
        if set(scores) == set(self.detectors):  # keyed by the names: read by name, whatever the order
            by_name = {n: scores[n].cpu() for n in self.detectors}
        else:  # other keys (e.g. a registry's keys for repeated names): by position, as documented
            by_name = {n: s.cpu() for n, s in zip(self.detectors, scores.values())}
        return ScoredSet(failures(outputs.logits, labels).cpu(), outputs.probs.amax(dim=1).cpu(), by_name)

    def choose(self, val: ScoredSet, outliers: ScoredSet) -> MonitorChoice:
        """Choose among the candidates by their escaped rate on validation inputs and outliers (see
        :func:`~mlsafety.systemic.choose_monitor`); the choice is kept (:attr:`monitor`)."""
        cands = candidate_monitors(val, self.detectors, self.false_alarm_rate, self.confidence_share)
        self.choice_ = MonitorChoice(*choose_monitor(cands, val, outliers, self.ood_share))
        return self.choice_

    @property
    def choice(self) -> MonitorChoice:
        """The choice made by :meth:`choose` (the monitor and every candidate's criterion)."""
        if self.choice_ is None:
            raise InputError("choose the monitor on validation data first (DefenceInDepthEvaluator.choose)")
        return self.choice_

    @property
    def monitor(self) -> Monitor:
        """The chosen monitor (after :meth:`choose`)."""
        return self.choice.monitor

    # -- hazards -------------------------------------------------------------------------------
    def flags(self, x: torch.Tensor, outputs: Outputs) -> torch.Tensor:
        """(N,) bool: which inputs the chosen monitor flags (only its own detector is scored)."""
        mon = self.monitor
        scores = None
        if mon.detector is not None:
            scores = next(iter(self.scores(x, outputs, [mon.detector]).values())).cpu()
        return mon.flags(scores, outputs.probs.amax(dim=1).cpu())

    def outcome(self, x: torch.Tensor, outputs: Outputs, labels: torch.Tensor) -> Outcome:
        """Every input's cell under the chosen monitor: failed (wrong answer or OOD) and flagged."""
        flagged = self.flags(x, outputs)
        return Outcome(failures(outputs.logits, labels).cpu(), flagged)

    def adaptive(self, outcome: Outcome, x_adv: torch.Tensor, outputs: Outputs, labels: torch.Tensor) -> HazardResult:
        """The hazard's result with the monitor-aware attack: ``x_adv`` are its inputs (made from the
        same clean inputs, in the same order, as the hazard's), ``outputs`` their forward outputs;
        the adaptive outcome is the per-input worst case of both attacks."""
        alone = Outcome(failures(outputs.logits, labels).cpu(), self.flags(x_adv, outputs))
        return HazardResult(outcome, outcome.worst_case(alone), alone)
