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
