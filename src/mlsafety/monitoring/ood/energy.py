"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", 2020)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import Detector, energy_of, register


@register("energy")
class Energy(Detector):
    """Anomaly score = free energy ``-T logsumexp(logits / T)``.

    Args:
        temperature: ``T`` (the paper uses 1).
    """

    needs = frozenset({"logits"})

    def __init__(self, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise InputError(f"energy temperature must be positive, got {temperature}")
        self.temperature = temperature

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return energy_of(outputs.logits, self.temperature)
