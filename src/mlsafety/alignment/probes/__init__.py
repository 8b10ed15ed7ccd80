"""Honesty probes: read what a language model "knows" from its hidden states on contrast pairs.

One method per file (``ccs.py``, ``logistic.py``, ``mean_diff.py``, ``top_pc.py``, ``zero_shot.py``),
registered in :data:`PROBES`; contrast pairs and templates in ``pairs.py``; accuracy per layer, prompt
sensitivity, transfer, misleading prefixes and the honesty gap in ``evaluate.py``.
"""

from mlsafety.alignment.probes import ccs, logistic, mean_diff, top_pc
from mlsafety.alignment.probes.base import PROBES, Probe, normalize
from mlsafety.alignment.probes.ccs import CCS, ccs_loss
from mlsafety.alignment.probes.evaluate import (
    ZERO_SHOT,
    ZERO_SHOT_CALIBRATED,
    ContrastStates,
    LayerResult,
    ProbeReport,
    accuracy_estimate,
    contrast_states,
    fit_and_test,
    fit_probe,
    probe_result,
    run_probes,
    split_items,
)
from mlsafety.alignment.probes.logistic import Logistic
from mlsafety.alignment.probes.mean_diff import MeanDiff
from mlsafety.alignment.probes.pairs import (
    MISLEADING_PREFIX,
    TEMPLATES,
    ContrastPairs,
    Template,
    check_template,
    check_two_classes,
    load_qa_rows,
    statement_pairs,
    text_pairs,
)
from mlsafety.alignment.probes.top_pc import TopPC
from mlsafety.alignment.probes.zero_shot import zero_shot_scores

del ccs, logistic, mean_diff, top_pc

__all__ = [
    "CCS",
    "MISLEADING_PREFIX",
    "PROBES",
    "TEMPLATES",
    "ZERO_SHOT",
    "ZERO_SHOT_CALIBRATED",
    "ContrastPairs",
    "ContrastStates",
    "LayerResult",
    "Logistic",
    "MeanDiff",
    "Probe",
    "ProbeReport",
    "Template",
    "TopPC",
    "accuracy_estimate",
    "ccs_loss",
    "check_template",
    "check_two_classes",
    "contrast_states",
    "fit_and_test",
    "fit_probe",
    "load_qa_rows",
    "normalize",
    "probe_result",
    "run_probes",
    "split_items",
    "statement_pairs",
    "text_pairs",
    "zero_shot_scores",
]
