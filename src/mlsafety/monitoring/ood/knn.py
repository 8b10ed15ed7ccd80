"""Deep nearest neighbours (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import Detector, cdist_topk, features_of, register


@register("knn")
class KNN(Detector):
    """Anomaly score = distance from the L2-normalised feature to its ``k``-th nearest neighbour
    among the normalised in-distribution features (exact search in torch, in batches).

    Args:
        k: the neighbour (paper default for CIFAR-10; capped at the number of stored features).
        chunk: query rows per distance matrix (memory bound: ``chunk x N_fit`` floats).
    """

    needs = frozenset({"features"})
    requires_fit = True

    def __init__(self, k: int = 50, chunk: int = 1024) -> None:
        if k < 1:
            raise InputError(f"knn needs k >= 1, got {k}")
        self.k = k
        self.chunk = chunk

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.bank_ = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        q = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)
        k = min(self.k, self.bank_.shape[0])
        return cdist_topk(q, self.bank_, k, self.chunk)[:, k - 1]
