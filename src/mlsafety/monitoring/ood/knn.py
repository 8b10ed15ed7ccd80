"""Deep nearest neighbours (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022)."""

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


@register("knn")
class KNN(Detector):
    """Anomaly score = distance from the L2-normalised feature to its ``k``-th nearest neighbour
    among the normalised in-distribution features (exact search in torch, in batches).

    For unit vectors the distance is ``sqrt(2 - 2 cos)``, so the search is one matrix product
    with the bank and a selection of each row's ``k``-th largest similarity (shared with
    NNGuide when both run in one engine call).

    Args:
        k: the neighbour (paper default for CIFAR-10; capped at the number of stored features).
        chunk: query rows per block of similarities off the CPU (memory ``chunk x N_fit`` floats;
            on the CPU blocks are sized to stay in cache).
    """

    needs = frozenset({"features"})
    requires_fit = True

    def __init__(self, k: int = 50, chunk: int = 1024) -> None:
        if k < 1:
            raise InputError(f"knn needs k >= 1, got {k}")
        self.k = k
        self.chunk = chunk

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        self.bank_, self.columns_ = reuse("unit-bank", (f,), lambda: unit_bank(f))

    def _search(self) -> Search:
        return Search("kth", min(self.k, self.bank_.shape[0]))

    def plan(self, outputs: Outputs) -> None:
        plan_search(features_of(outputs), self.bank_, self.columns_, self._search())

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        kth = bank_search(features_of(outputs), self.bank_, self.columns_, self._search(), self.chunk)
        return (2 - 2 * kth).clamp_min(0).sqrt()
