"""Simplified Hopfield energy (Zhang et al., "Out-of-Distribution Detection based on In-Distribution
Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, features_of, register
from mlsafety.monitoring.ood.engine import float64


@register("she", tags=(IMAGE, TEXT))
class SHE(Detector):
    """Anomaly score ``-<f, m_c>``: minus the inner product of the feature with the stored pattern
    ``m_c`` of its predicted class ``c``.

    Patterns ``patterns_`` (K, D) are the mean features of the correctly classified
    in-distribution inputs of each class (all inputs of the class when none is correct). A class
    with no fit input has no pattern (``seen_`` is False, its row of ``patterns_`` is 0) and an
    input predicted as it is scored with the pattern of the seen class of largest logit (a zero
    pattern would give it the score 0 whatever its features).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = float64(features_of(outputs))
        k = outputs.logits.shape[1]
        pred = outputs.logits.argmax(dim=1)
        patterns = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device)
        filled = torch.zeros(k, dtype=torch.bool, device=f.device)
        for use in (pred == labels, torch.ones_like(labels, dtype=torch.bool)):
            counts = torch.bincount(labels[use], minlength=k).to(f.dtype)[:, None]
            sums = torch.zeros_like(patterns).index_add_(0, labels[use], f[use])
            fill = (counts[:, 0] > 0) & ~filled
            patterns[fill] = (sums / counts.clamp_min(1))[fill]
            filled |= fill
        self.patterns_ = patterns
        self.seen_ = filled

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = features_of(outputs)
        logits = outputs.logits
        seen = getattr(self, "seen_", None)  # None: state exported before seen_ existed (scored as it was then)
        if seen is not None and not bool(seen.all()):
            logits = logits.detach().masked_fill(~seen.to(logits.device), -torch.inf)
        pred = logits.argmax(dim=1)
        # every inner product with the K patterns (one small product), then the predicted class's
        inner = f @ self.patterns_.to(f.dtype).T
        return -inner.gather(1, pred[:, None]).reshape(-1).double()
