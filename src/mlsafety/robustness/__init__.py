"""Robustness: adversarial attacks, robust accuracy and adversarial training.

See :mod:`mlsafety.robustness.attacks` for the attack family (``create``, ``available``).
"""

from mlsafety.robustness import attacks
from mlsafety.robustness._evaluate import RobustnessResult, evaluate, sanity_flags
from mlsafety.robustness.training import adversarial_training, harden, trades_training

__all__ = [
    "RobustnessResult",
    "adversarial_training",
    "attacks",
    "evaluate",
    "harden",
    "sanity_flags",
    "trades_training",
]
