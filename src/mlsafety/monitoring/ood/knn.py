"""Deep nearest neighbours (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, QUICK, TEXT, register
from mlsafety.monitoring.ood.search import BankDetector, Search


@register("knn", tags=(QUICK, IMAGE, TEXT))
class KNN(BankDetector):
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

    k = Param(50, int, low=1, doc="the neighbour whose distance is the score (capped at the bank size)")

    def _search(self) -> Search:
        return Search("kth", min(self.k, self.bank_.shape[0]))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return (2 - 2 * self._searched(outputs)).clamp_min(0).sqrt()
