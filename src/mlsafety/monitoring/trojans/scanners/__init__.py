"""Trojan scanners, one per file, in the registry ``SCANNERS`` (``create(name, **params)``)."""

from mlsafety.monitoring.trojans.scanners._base import (
    SCANNERS,
    ScanData,
    Scanner,
    ScanResult,
    SeedScan,
    Trigger,
    register_scanner,
)
from mlsafety.monitoring.trojans.scanners.abs import ABS
from mlsafety.monitoring.trojans.scanners.activation_clustering import ActivationClustering
from mlsafety.monitoring.trojans.scanners.neural_cleanse import NeuralCleanse, anomaly_index, reverse_engineer
from mlsafety.monitoring.trojans.scanners.spectral_signatures import SpectralSignatures
from mlsafety.monitoring.trojans.scanners.strip import STRIP, strip_entropy


def create(name: str, **params: object) -> Scanner:
    """A scanner by registry name with hyper-parameters ``params``."""
    return SCANNERS.create(name, **params)


def available() -> list[str]:
    """Registered scanner names."""
    return SCANNERS.available()


__all__ = [
    "ABS",
    "SCANNERS",
    "STRIP",
    "ActivationClustering",
    "NeuralCleanse",
    "ScanData",
    "ScanResult",
    "Scanner",
    "SeedScan",
    "SpectralSignatures",
    "Trigger",
    "anomaly_index",
    "available",
    "create",
    "register_scanner",
    "reverse_engineer",
    "strip_entropy",
]
