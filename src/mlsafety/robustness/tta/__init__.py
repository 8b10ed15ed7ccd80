"""Test-time adaptation (TTA) and attacks on it, one method per module, registered by name.

``create(name, **params)`` builds a method (``create("tent")``), ``available()`` lists them:
``tebn`` (test-time batch statistics), ``tent`` (entropy minimisation), ``hard-pl`` / ``soft-pl``
(pseudo-labels), and the defences ``alpha-bn`` (training statistics mixed in) and ``medbn``
(median statistics). ``method.adapt(model, x)`` adapts to one batch, :class:`Stream` carries the
state across batches; :class:`DIA` attacks the adaptation (Wu et al. 2023); :mod:`.evaluate`
measures accuracy with and without adaptation and attack success, with exact intervals. No
function leaves the model changed: the adapted state lives outside it.

Example:
    >>> from mlsafety.robustness import tta
    >>> logits = tta.create("tebn").adapt(model, x_batch)
"""

from mlsafety.robustness.tta.base import (
    TTA_METHODS,
    GradientTTA,
    TTAMethod,
    TTAState,
    available,
    batch_statistics,
    create,
    norm_layers,
    normalised_logits,
    register_tta,
)
from mlsafety.robustness.tta.dia import DIA, OBJECTIVES, DIAResult
from mlsafety.robustness.tta.evaluate import (
    SHARES,
    AdaptationAccuracy,
    AttackBatches,
    AttackSuccess,
    adaptation_accuracy,
    attack_success,
    draw_batches,
    malicious_count,
)
from mlsafety.robustness.tta.medbn import MedBN, median_statistics
from mlsafety.robustness.tta.pseudo_label import HardPseudoLabel, SoftPseudoLabel
from mlsafety.robustness.tta.robust_bn import AlphaBN
from mlsafety.robustness.tta.stream import Stream
from mlsafety.robustness.tta.tebn import TeBN
from mlsafety.robustness.tta.tent import Tent, entropy

__all__ = [
    "DIA",
    "OBJECTIVES",
    "SHARES",
    "TTA_METHODS",
    "AdaptationAccuracy",
    "AlphaBN",
    "AttackBatches",
    "AttackSuccess",
    "DIAResult",
    "GradientTTA",
    "HardPseudoLabel",
    "MedBN",
    "SoftPseudoLabel",
    "Stream",
    "TTAMethod",
    "TTAState",
    "TeBN",
    "Tent",
    "adaptation_accuracy",
    "attack_success",
    "available",
    "batch_statistics",
    "create",
    "draw_batches",
    "entropy",
    "malicious_count",
    "median_statistics",
    "norm_layers",
    "normalised_logits",
    "register_tta",
]
