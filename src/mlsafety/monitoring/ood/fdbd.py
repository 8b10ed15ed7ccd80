"""Fast decision-boundary distance (Liu & Qin, "Fast Decision Boundary based Out-of-Distribution
Detector", ICML 2024)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_HEAD_WEIGHTS, TEXT, Detector, features_of, head_of, register
from mlsafety.monitoring.ood.engine import float64


@register("fdbd", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class FDBD(Detector):
    """Anomaly score ``-mean_{k != c} |l_c - l_k| / ||w_c - w_k|| / ||f - mu||``.

    The numerator is the mean distance in feature space from ``f`` to the linear decision
    boundaries between the predicted class ``c`` and every other class (closed form for a linear
    head); ``mu`` (``mean_``) is the mean in-distribution feature. In-distribution inputs lie far
    from the boundaries relative to their distance from the mean.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.mean_ = float64(features_of(outputs)).mean(dim=0)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = features_of(outputs).float()
        w, b = head_of(clf)
        w, b = w.float(), b.float()
        logits = f @ w.T + b  # recomputed from the features so boundary and logits agree exactly
        c = logits.argmax(dim=1)
        k = w.shape[0]
        gap = (logits.gather(1, c[:, None]) - logits).abs()  # (N, K)
        wd = w.double()
        gram = wd @ wd.T
        sq = gram.diagonal()
        pair = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).sqrt()  # ||w_i - w_j|| (K, K)
        inv = 1 / pair.clamp_min(1e-12)
        inv.fill_diagonal_(0.0)  # the predicted class's own term drops out of the mean
        mean_dist = (gap.double() * inv[c]).sum(dim=1) / max(k - 1, 1)
        norm = torch.linalg.vector_norm(f - self.mean_.to(f.dtype), dim=1).double()
        return -mean_dist / norm.clamp_min(1e-12)
