"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", 2020)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, QUICK, TEXT, Detector, energy_of, register


@register("energy", tags=(QUICK, IMAGE, TEXT))
class Energy(Detector):
    """Anomaly score = free energy ``-T logsumexp(logits / T)``.

    Args:
        temperature: ``T`` (the paper uses 1).
    """

    needs = frozenset({"logits"})

    temperature = Param(1.0, float, low=0, low_open=True, doc="temperature T of the energy")

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return energy_of(outputs.logits, self.temperature)

    def prepared_scorer(self) -> Callable[[Outputs], torch.Tensor]:
        return _PreparedEnergy(self.temperature)


class _PreparedEnergy:
    """:meth:`Energy.score_outputs` without its checks; at temperature 1 two operations fewer (dividing and
    multiplying by 1 are exact, so the scores are the same)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, outputs: Outputs) -> torch.Tensor:
        if self.temperature == 1.0:
            return torch.logsumexp(outputs.logits, dim=1).neg_().float()
        return energy_of(outputs.logits, self.temperature).float()
