"""Nearest-neighbour guidance (Park et al., "Nearest Neighbor Guidance for Out-of-Distribution
Detection", ICCV 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import Detector, features_of, register


@register("nnguide")
class NNGuide(Detector):
    """Anomaly score ``-(logsumexp(logits) * g(f))`` with guidance ``g(f)`` = the mean of the ``k``
    largest inner products between the normalised feature and the bank of normalised
    in-distribution features, each scaled by its own energy confidence ``logsumexp(logits)``.

    Args:
        k: neighbours averaged (capped at the bank size).
        chunk: query rows per similarity matrix.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def __init__(self, k: int = 100, chunk: int = 1024) -> None:
        if k < 1:
            raise InputError(f"nnguide needs k >= 1, got {k}")
        self.k = k
        self.chunk = chunk

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)
        conf = torch.logsumexp(outputs.logits.float(), dim=1)
        self.bank_ = f * conf[:, None]

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        q = torch.nn.functional.normalize(features_of(outputs).float(), dim=1)
        k = min(self.k, self.bank_.shape[0])
        guidance = torch.cat(
            [
                (q[s : s + self.chunk] @ self.bank_.T).topk(k, dim=1).values.mean(dim=1)
                for s in range(0, q.shape[0], self.chunk)
            ]
        )
        return -(torch.logsumexp(outputs.logits.float(), dim=1) * guidance)
