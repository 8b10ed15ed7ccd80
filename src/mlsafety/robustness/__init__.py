"""Robustness: adversarial attacks, robust accuracy, adversarial training, corruptions and augmentations.

Sub-packages keep their own registries (``attacks.create``, ``corruptions.create``,
``augment.create``); this package re-exports them and the functions most users start from.

Example:
    >>> from mlsafety.robustness import attacks, evaluate
    >>> res = evaluate(model, (x, y), attacks.create("autoattack", eps=8 / 255))
"""

from mlsafety.robustness import attacks, augment, corruptions, smoothing, tta
from mlsafety.robustness._denoise import train_denoiser  # also registers the zoo denoisers' recipes
from mlsafety.robustness._evaluate import (
    AttackSummary,
    CertificationSummary,
    RobustnessResult,
    evaluate,
    evaluate_outputs,
    sanity_flags,
    summarize_attack,
    summarize_certificates,
)
from mlsafety.robustness.corruptions import corrupt
from mlsafety.robustness.training import adversarial_training, harden, trades_training

__all__ = [
    "AttackSummary",
    "CertificationSummary",
    "RobustnessResult",
    "adversarial_training",
    "attacks",
    "augment",
    "corrupt",
    "corruptions",
    "evaluate",
    "evaluate_outputs",
    "harden",
    "sanity_flags",
    "smoothing",
    "summarize_attack",
    "summarize_certificates",
    "trades_training",
    "train_denoiser",
    "tta",
]
