"""Nearest-neighbour guidance (Park et al., "Nearest Neighbor Guidance for Out-of-Distribution
Detection", ICCV 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import (
    Detector,
    Search,
    bank_search,
    features_of,
    plan_search,
    register,
    reuse,
    unit_bank,
)


@register("nnguide")
class NNGuide(Detector):
    """Anomaly score ``-(logsumexp(logits) * g(f))`` with guidance ``g(f)`` = the mean of the ``k``
    largest inner products between the normalised feature and the bank of normalised
    in-distribution features, each scaled by its own energy confidence ``logsumexp(logits)``.

    The scaled inner products are the cosine similarities (shared with KNN in one engine call)
    times each bank row's confidence.

    Args:
        k: neighbours averaged (capped at the bank size).
        chunk: query rows per block of similarities off the CPU (on the CPU blocks are sized to
            stay in cache).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def __init__(self, k: int = 100, chunk: int = 1024) -> None:
        if k < 1:
            raise InputError(f"nnguide needs k >= 1, got {k}")
        self.k = k
        self.chunk = chunk

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        self.bank_, self.columns_ = reuse("unit-bank", (f,), lambda: unit_bank(f))
        self.confidence_ = torch.logsumexp(outputs.logits.float(), dim=1)

    def _search(self) -> Search:
        return Search("top-sum", min(self.k, self.bank_.shape[0]), self.confidence_)

    def plan(self, outputs: Outputs) -> None:
        plan_search(features_of(outputs), self.bank_, self.columns_, self._search())

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        search = self._search()
        total = bank_search(features_of(outputs), self.bank_, self.columns_, search, self.chunk)
        return -(torch.logsumexp(outputs.logits.float(), dim=1) * (total / search.k))
