"""Choosing the system's monitor on validation data: clean validation inputs plus synthetic outliers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mlsafety.core import InputError, Outputs
from mlsafety.metrics import Estimate
from mlsafety.systemic._monitor import Monitor
from mlsafety.systemic._outcomes import Outcome, expected_escaped_rate

ScoreFn = Callable[[Outputs], torch.Tensor]
"""Maps forward outputs (logits and features) to (N,) anomaly scores, higher = more anomalous."""

CONFIDENCE = "confidence"
"""Name of the monitor part that flags low top-class probability (selective prediction)."""


@dataclass(frozen=True)
class ScoredSet:
    """What a monitor sees of a set of inputs, and whether the model failed on each.

    Args:
        failed: (N,) bool, the model's answer is wrong (always true for OOD inputs).
        confidence: (N,) top-class probabilities.
        scores: (N,) anomaly scores per detector name.
    """

    failed: torch.Tensor
    confidence: torch.Tensor
    scores: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def flags(self, monitor: Monitor) -> torch.Tensor:
        scores = None
        if monitor.detector is not None:
            if monitor.detector not in self.scores:
                raise InputError(f"no scores of detector {monitor.detector!r} for monitor {monitor.name!r}")
            scores = self.scores[monitor.detector]
        return monitor.flags(scores, self.confidence)

    def outcome(self, monitor: Monitor) -> Outcome:
        return Outcome(self.failed, self.flags(monitor))


def candidate_monitors(
    val: ScoredSet, detectors: Sequence[str], false_alarm_rate: float = 0.05, confidence_share: float = 0.5
) -> list[Monitor]:
    """Every monitor worth trying, each with thresholds set on the correct answers of ``val``:
    confidence alone, then per detector the detector alone and the detector combined with confidence.

    Args:
        val: the clean validation set with every detector's scores.
        detectors: detector names (keys of ``val.scores``).
        false_alarm_rate: the share of correct validation answers each monitor may flag.
        confidence_share: share of the false-alarm budget given to confidence in combined monitors.
    """
    correct = ~val.failed
    out = [Monitor.fit(CONFIDENCE, None, correct, false_alarm_rate, val_confidence=val.confidence)]
    for name in detectors:
        if name not in val.scores:
            raise InputError(f"no validation scores for detector {name!r}")
        s = val.scores[name]
        out.append(Monitor.fit(name, s, correct, false_alarm_rate, detector=name))
        out.append(
            Monitor.fit(
                f"{name}+{CONFIDENCE}",
                s,
                correct,
                false_alarm_rate,
                val_confidence=val.confidence,
                confidence_share=confidence_share,
                detector=name,
            )
        )
    return out


def validation_escape(monitor: Monitor, val: ScoredSet, outliers: ScoredSet, ood_share: float = 0.5) -> Estimate:
    """The selection criterion: the escaped-failure rates on clean validation inputs and on synthetic
    outliers weighed ``1 - ood_share`` and ``ood_share`` (by default one half each, so the few clean
    mistakes are not drowned). It is the combined risk of learning to reject meets OOD
    (:func:`mlsafety.monitoring.ood.combined_risk`, same threshold rule) for an OOD share ``ood_share``.

    The interval is exact and conservative, as in :func:`expected_escaped_rate`: each rate's
    Clopper-Pearson interval at 97.5% (Bonferroni over the two sets; 95% when ``ood_share`` is 0 or 1
    and only one set counts), averaged; ``n`` counts the inputs of the sets that count.
    """
    outcomes = {"validation": val.outcome(monitor), "outliers": outliers.outcome(monitor)}
    if not 0.0 <= ood_share <= 1.0:
        raise InputError(f"ood_share must lie in [0, 1], got {ood_share}")
    return expected_escaped_rate(outcomes, {"validation": 1.0 - ood_share, "outliers": ood_share})


def choose_monitor(
    candidates: Sequence[Monitor], val: ScoredSet, outliers: ScoredSet, ood_share: float = 0.5
) -> tuple[Monitor, dict[str, Estimate]]:
    """The candidate with the lowest :func:`validation_escape` value at OOD share ``ood_share`` (ties: the
    earlier, simpler one), and every candidate's criterion (with its interval) by name."""
    if not candidates:
        raise InputError("no candidate monitors to choose from")
    crit = {m.name: validation_escape(m, val, outliers, ood_share) for m in candidates}
    best = min(candidates, key=lambda m: crit[m.name].value)  # min keeps the first of equal values
    return best, crit
