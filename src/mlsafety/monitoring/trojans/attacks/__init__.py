"""Trojan (backdoor) attacks to test scanners against: poison a training set, apply the trigger.

One attack per module (:mod:`.badnets`, :mod:`.blended`, :mod:`.wanet`, :mod:`.label_consistent`),
each a :class:`TriggerAttack` registered in :data:`TROJAN_ATTACKS`; :mod:`.base` holds the base
class, the registry and the metrics. :func:`train_trojaned` turns any model factory and dataset
into a trojaned model with the shared training loop, and :func:`trojan_metrics` measures clean
accuracy, attack success rate and robust accuracy on triggered inputs.

Example:
    >>> attack = create("badnets", size=3)
    >>> model, poisoned = train_trojaned(DigitsCNN, load_dataset("digits", "train"), attack, rate=0.1, target=7)
    >>> trojan_metrics(model, attack, load_dataset("digits", "test"), target=7)["attack_success_rate"]
"""

from mlsafety.monitoring.trojans.attacks._plant import train_trojaned
from mlsafety.monitoring.trojans.attacks.badnets import BadNets
from mlsafety.monitoring.trojans.attacks.base import (
    TROJAN_ATTACKS,
    Poisoned,
    TriggerAttack,
    available,
    create,
    triggered_inputs,
    trojan_metrics,
)
from mlsafety.monitoring.trojans.attacks.blended import Blended
from mlsafety.monitoring.trojans.attacks.label_consistent import LabelConsistent
from mlsafety.monitoring.trojans.attacks.wanet import WaNet

__all__ = [
    "TROJAN_ATTACKS",
    "BadNets",
    "Blended",
    "LabelConsistent",
    "Poisoned",
    "TriggerAttack",
    "WaNet",
    "available",
    "create",
    "train_trojaned",
    "triggered_inputs",
    "trojan_metrics",
]
