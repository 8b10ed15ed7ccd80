"""Trojans: plant them (attacks), find them (scanners), remove them (repair), and judge scanners on a
population of clean and trojaned models.

Two families, each with its own registry and factory:

* :mod:`mlsafety.monitoring.trojans.scanners`: ``create`` / ``available`` over ``SCANNERS``
  (``neural-cleanse``, ``abs``, ``strip``, ...), e.g. ``scanners.create("strip").scan(model, data)``;
* :mod:`mlsafety.monitoring.trojans.attacks`: ``create`` / ``available`` over ``TROJAN_ATTACKS``
  (``badnets``, ``blended``, ``wanet``, ``label-consistent``).

This package re-exports both registries and their classes but no ``create`` of its own: which
family a name belongs to is always said.
"""

from mlsafety.monitoring.trojans import attacks, scanners
from mlsafety.monitoring.trojans.attacks import (
    TROJAN_ATTACKS,
    BadNets,
    Blended,
    LabelConsistent,
    Poisoned,
    TriggerAttack,
    WaNet,
    train_trojaned,
    triggered_inputs,
    trojan_metrics,
)
from mlsafety.monitoring.trojans.population import (
    Member,
    PopulationScore,
    demo_attack,
    load_population,
    make_population,
    plan_population,
    score_scanner,
    train_digits_cnn_badnets,
)
from mlsafety.monitoring.trojans.repair import Repaired, fine_pruning, nc_pruning, nc_unlearning
from mlsafety.monitoring.trojans.scanners import (
    ABS,
    SCANNERS,
    STRIP,
    ActivationClustering,
    NeuralCleanse,
    Scanner,
    ScanResult,
    SpectralSignatures,
    Trigger,
    anomaly_index,
)

__all__ = [
    "ABS",
    "SCANNERS",
    "STRIP",
    "TROJAN_ATTACKS",
    "ActivationClustering",
    "BadNets",
    "Blended",
    "LabelConsistent",
    "Member",
    "NeuralCleanse",
    "Poisoned",
    "PopulationScore",
    "Repaired",
    "ScanResult",
    "Scanner",
    "SpectralSignatures",
    "Trigger",
    "TriggerAttack",
    "WaNet",
    "anomaly_index",
    "attacks",
    "demo_attack",
    "fine_pruning",
    "load_population",
    "make_population",
    "nc_pruning",
    "nc_unlearning",
    "plan_population",
    "scanners",
    "score_scanner",
    "train_digits_cnn_badnets",
    "train_trojaned",
    "triggered_inputs",
    "trojan_metrics",
]
