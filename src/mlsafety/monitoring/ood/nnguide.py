"""Nearest-neighbour guidance (Park et al., "Nearest Neighbor Guidance for Out-of-Distribution
Detection", ICCV 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, TEXT, register
from mlsafety.monitoring.ood.search import BankDetector, Search


@register("nnguide", tags=(IMAGE, TEXT))
class NNGuide(BankDetector):
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

    k = Param(100, int, low=1, doc="neighbours averaged in the guidance (capped at the bank size)")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        super()._fit(clf, outputs, labels)
        self.confidence_ = torch.logsumexp(outputs.logits.float(), dim=1)

    def _search(self) -> Search:
        return Search("top-sum", min(self.k, self.bank_.shape[0]), self.confidence_)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        guidance = self._searched(outputs) / min(self.k, self.bank_.shape[0])
        return -(torch.logsumexp(outputs.logits.float(), dim=1) * guidance)
