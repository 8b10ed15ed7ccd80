"""mlsafety: measure how safe a trained PyTorch classifier is before deployment, and guard it after.

The pillars are sub-packages, imported on first use::

    import mlsafety
    model = mlsafety.zoo.load_model("digits-cnn")
    test = mlsafety.zoo.load_dataset("digits", "test")
    clf = mlsafety.Classifier(model)
    feats, logits = clf.features_and_logits(test.x)

``mlsafety.robustness``, ``mlsafety.monitoring``, ``mlsafety.systemic`` hold the algorithms;
``mlsafety.audit`` runs them all and writes the report (the CLI ``mlsafety audit``).
"""

from __future__ import annotations

import importlib
import os
import sys

if "torch" not in sys.modules:  # OpenMP reads it when torch loads its threads: later it has no effect
    # Idle OpenMP threads sleep instead of spinning, so a loaded machine (more busy threads than cores)
    # does not collapse (issue 22: a 30 s audit took 559 s next to other processes). A user's own
    # OMP_WAIT_POLICY wins; see bench/results/audit_threads.md for the effect.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import Any

from mlsafety import metrics, zoo
from mlsafety.core import (
    ArrayDataset,
    Classifier,
    InputError,
    MlsafetyError,
    Normalize,
    NotFittedError,
    as_classifier,
    generator,
)

__version__ = "0.1.0"

_LAZY = ("alignment", "monitoring", "robustness", "systemic")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"mlsafety.{name}")
    raise AttributeError(f"module 'mlsafety' has no attribute {name!r}")


__all__ = [
    "ArrayDataset",
    "Classifier",
    "InputError",
    "MlsafetyError",
    "Normalize",
    "NotFittedError",
    "__version__",
    "as_classifier",
    "generator",
    "metrics",
    "zoo",
]
