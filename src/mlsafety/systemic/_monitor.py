"""A monitor: a detector score and/or the model's confidence, with thresholds fixed on clean validation data.

The monitor *flags* an input (hands it to a fallback, a human, or a refusal) when the detector's
anomaly score is above its threshold, or the model's top-class probability is below its threshold.
Thresholds are set on the validation inputs the model answers correctly, so that at most
``false_alarm_rate`` of them are flagged: a flag on a correct answer is a false alarm, a flag on a
wrong answer is a catch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mlsafety.core import InputError


def threshold_at_rate(scores: torch.Tensor, rate: float) -> float:
    """The smallest sample value ``t`` such that at most ``rate`` of ``scores`` lie strictly above it.

    With ``k = floor(rate * n)`` and the scores sorted in descending order, ``t`` is the ``(k+1)``-th
    largest score, so flagging ``score > t`` flags exactly ``k`` inputs when there are no ties (fewer
    with ties at ``t``). ``rate = 0`` gives the maximum (nothing flagged).

    The rate holds on ``scores`` themselves. A new score exchangeable with them (a new correct answer)
    lies above ``t`` with probability ``(k + 1) / (n + 1)`` (continuous scores), up to ``1 / (n + 1)``
    above ``rate``: 5.5% at ``rate = 0.05`` and ``n = 90``. The rule is the one of
    :func:`mlsafety.monitoring.ood.combined_risk`; the rate measured on test data is reported with its interval.

    Args:
        scores: (N,) finite scores, higher = more anomalous.
        rate: the largest share of ``scores`` allowed above the threshold, in [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise InputError(f"false-alarm rate must lie in [0, 1), got {rate}")
    s = scores.detach().reshape(-1).double()
    if s.numel() == 0:
        raise InputError("cannot set a threshold on zero validation scores")
    if not torch.isfinite(s).all():
        raise InputError("validation scores contain NaN or infinite values")
    k = math.floor(rate * s.numel() + 1e-9)
    return float(s.sort(descending=True).values[k])


@dataclass(frozen=True)
class Monitor:
    """Flags inputs whose detector score is above ``score_threshold`` or whose confidence is below
    ``confidence_threshold`` (a missing threshold means that part is not used).

    Build one with :meth:`fit`. ``score_scale`` and ``confidence_scale`` are the spread (standard
    deviation) of the validation scores, used to put the two parts on one scale in adaptive attacks.

    Example:
        >>> mon = Monitor.fit("energy", val_scores, val_correct, false_alarm_rate=0.05)
        >>> flagged = mon.flags(test_scores)
    """

    name: str
    detector: str | None = None
    score_threshold: float | None = None
    confidence_threshold: float | None = None
    false_alarm_rate: float = 0.05
    score_scale: float = 1.0
    confidence_scale: float = 1.0

    @property
    def uses_confidence(self) -> bool:
        return self.confidence_threshold is not None

    @classmethod
    def fit(
        cls,
        name: str,
        val_scores: torch.Tensor | None,
        val_correct: torch.Tensor,
        false_alarm_rate: float = 0.05,
        val_confidence: torch.Tensor | None = None,
        confidence_share: float = 0.5,
        detector: str | None = None,
    ) -> Monitor:
        """Set the thresholds on clean validation data.

        Args:
            name: the monitor's name in reports (e.g. ``"energy+confidence"``).
            val_scores: (N,) detector scores of the validation inputs (None: confidence only).
            val_correct: (N,) bool, whether the model answers each validation input correctly;
                thresholds are set on the correct ones only.
            false_alarm_rate: the share of correct validation answers the monitor may flag.
            val_confidence: (N,) top-class probabilities (None: no confidence part).
            confidence_share: when both parts are used, the share of the false-alarm budget given
                to the confidence part (the rest goes to the detector), so the joint rate on the
                validation answers stays within ``false_alarm_rate``. On new answers each part's rate
                exceeds its share by up to ``1 / (n + 1)`` (:func:`threshold_at_rate`), so the union's
                by up to ``2 / (n + 1)``: 6.6% at most for a 5% budget split evenly over 90 answers
                (6.4% in a simulation with independent parts).
            detector: the detector's registry name (recorded, not used).
        """
        if val_scores is None and val_confidence is None:
            raise InputError("a monitor needs detector scores, confidences, or both")
        if not 0.0 <= confidence_share <= 1.0:
            raise InputError(f"confidence_share must lie in [0, 1], got {confidence_share}")
        correct = val_correct.detach().reshape(-1).bool().cpu()
        for what, v in (("scores", val_scores), ("confidences", val_confidence)):
            if v is not None and v.numel() != correct.numel():
                raise InputError(f"{v.numel()} validation {what} but {correct.numel()} answers; give one per input")
        if not bool(correct.any()):
            raise InputError("the model answers no validation input correctly; cannot set a false-alarm threshold")
        both = val_scores is not None and val_confidence is not None
        conf_rate = false_alarm_rate * (confidence_share if both else 1.0)
        score_rate = false_alarm_rate - conf_rate if both else false_alarm_rate
        score_t = conf_t = None
        score_scale = conf_scale = 1.0
        if val_scores is not None:
            s = val_scores.detach().reshape(-1).cpu()[correct]
            score_t = threshold_at_rate(s, score_rate)
            score_scale = _spread(s)
        if val_confidence is not None:
            c = val_confidence.detach().reshape(-1).cpu()[correct]
            conf_t = -threshold_at_rate(-c, conf_rate)
            conf_scale = _spread(c)
        return cls(name, detector, score_t, conf_t, false_alarm_rate, score_scale, conf_scale)

    def flags(self, scores: torch.Tensor | None = None, confidence: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) bool: which inputs the monitor flags (``score > threshold`` or ``confidence < threshold``)."""
        flagged: torch.Tensor | None = None
        if self.score_threshold is not None:
            if scores is None:
                raise InputError(f"monitor {self.name!r} needs detector scores")
            flagged = scores.detach().reshape(-1) > self.score_threshold
        if self.confidence_threshold is not None:
            if confidence is None:
                raise InputError(f"monitor {self.name!r} needs confidences")
            low = confidence.detach().reshape(-1) < self.confidence_threshold
            flagged = low if flagged is None else flagged | low.to(flagged.device)
        assert flagged is not None  # fit() guarantees one part
        return flagged

    def violation(self, scores: torch.Tensor | None, confidence: torch.Tensor | None) -> torch.Tensor:
        """(N,) how far each input is inside the flagged region, in units of the validation spread.

        Positive means flagged; differentiable in ``scores`` and ``confidence`` (used as the loss
        of adaptive attacks, which push it below zero).
        """
        parts = []
        if self.score_threshold is not None:
            if scores is None:
                raise InputError(f"monitor {self.name!r} needs detector scores")
            parts.append((scores - self.score_threshold) / self.score_scale)
        if self.confidence_threshold is not None:
            if confidence is None:
                raise InputError(f"monitor {self.name!r} needs confidences")
            parts.append((self.confidence_threshold - confidence) / self.confidence_scale)
        return parts[0] if len(parts) == 1 else torch.maximum(parts[0], parts[1].to(parts[0].device))

    def describe(self) -> dict[str, object]:
        """The monitor's settings as plain values (for result rows' params)."""
        return {
            "monitor": self.name,
            "detector": self.detector,
            "score_threshold": self.score_threshold,
            "confidence_threshold": self.confidence_threshold,
            "false_alarm_rate_target": self.false_alarm_rate,
        }


def _spread(v: torch.Tensor) -> float:
    std = float(v.double().std()) if v.numel() > 1 else 0.0
    return std if math.isfinite(std) and std > 1e-12 else 1.0
