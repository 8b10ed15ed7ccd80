"""The runtime guard: the audit's chosen monitor shipped with the model, and a drift alarm.

``export_guard`` writes a guard directory from a stored run's defence-in-depth result, ``load_guard``
checks and loads it as a :class:`Guard` (an ``nn.Module``: logits, decision, score and reason per input
in one forward pass), and :class:`DriftAlarm` watches the stream of its scores. ``mlsafety guard export``
and ``mlsafety serve`` are the edges over this package.

Floor: above the pillars, beside ``audit`` (it reads stored runs through ``mlsafety.audit``'s public API).
"""

from mlsafety.guard._drift import DriftAlarm
from mlsafety.guard._export import (
    ExportResult,
    LoadedGuard,
    export_guard,
    load_guard,
    model_fingerprint,
    verify_guard_dir,
)
from mlsafety.guard._guard import ACCEPTED, HIGH_SCORE, LOW_CONFIDENCE, Guard, GuardOutput

__all__ = [
    "ACCEPTED",
    "HIGH_SCORE",
    "LOW_CONFIDENCE",
    "DriftAlarm",
    "ExportResult",
    "Guard",
    "GuardOutput",
    "LoadedGuard",
    "export_guard",
    "load_guard",
    "model_fingerprint",
    "verify_guard_dir",
]
