"""Systemic safety: defence-in-depth ("Swiss cheese") evaluation, FMEA from measurements.

A *monitor* (a detector score and/or the model's confidence, thresholds fixed on clean validation
data at a false-alarm rate) guards a classifier. Under every hazard, each input is a success, a
false alarm, a caught failure or an **escaped failure**; the escaped-failure rate is the residual
risk of the whole system. Hazards become failure modes of an FMEA table whose occurrence and
detection scores come from those measurements.

:class:`DefenceInDepthEvaluator` is the whole evaluation from precomputed forward outputs (what the
audit's ``defence-in-depth`` check calls). The pieces, for use on their own:

Example:
    >>> mon = Monitor.fit("energy", val_scores, val_correct, false_alarm_rate=0.05, detector="energy")
    >>> outcome = Outcome(failures(logits, labels), mon.flags(scores))
    >>> outcome.escaped_failure_rate()  # Estimate with an exact 95% interval
"""

from mlsafety.systemic._adaptive import MonitorAwareObjective, wrong_margin
from mlsafety.systemic._evaluate import DefenceInDepthEvaluator, DetectorScores, HazardResult, MonitorChoice
from mlsafety.systemic._fmea import (
    DEFAULT_SEVERITY,
    DETECTION_TABLE,
    OCCURRENCE_TABLE,
    SEVERITY_DEFAULTS,
    FmeaEntry,
    detection_score,
    fmea_entry,
    fmea_table,
    occurrence_score,
    severity_for,
)
from mlsafety.systemic._monitor import Monitor, threshold_at_rate
from mlsafety.systemic._outcomes import Outcome, expected_escaped_rate, failures
from mlsafety.systemic._plot import swiss_cheese_png
from mlsafety.systemic._select import (
    CONFIDENCE,
    ScoredSet,
    ScoreFn,
    candidate_monitors,
    choose_monitor,
    validation_escape,
)

__all__ = [
    "CONFIDENCE",
    "DEFAULT_SEVERITY",
    "DETECTION_TABLE",
    "OCCURRENCE_TABLE",
    "SEVERITY_DEFAULTS",
    "DefenceInDepthEvaluator",
    "DetectorScores",
    "FmeaEntry",
    "HazardResult",
    "Monitor",
    "MonitorAwareObjective",
    "MonitorChoice",
    "Outcome",
    "ScoreFn",
    "ScoredSet",
    "candidate_monitors",
    "choose_monitor",
    "detection_score",
    "expected_escaped_rate",
    "failures",
    "fmea_entry",
    "fmea_table",
    "occurrence_score",
    "severity_for",
    "swiss_cheese_png",
    "threshold_at_rate",
    "validation_escape",
    "wrong_margin",
]
