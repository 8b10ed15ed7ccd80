"""Virtual-logit matching (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

ViM is the residual score (:class:`~mlsafety.monitoring.ood.residual.Residual`, fitted the same way)
matched against the logits: the paper's split, kept in the code.
"""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_HEAD_WEIGHTS, QUICK, TEXT, features_of, register
from mlsafety.monitoring.ood.engine import float64
from mlsafety.monitoring.ood.residual import Residual


@register("vim", tags=(QUICK, IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class ViM(Residual):
    """Anomaly score ``alpha * ||P_perp (f - u)|| - logsumexp(logits)``.

    The residual ``||P_perp (f - u)||`` is :class:`~mlsafety.monitoring.ood.residual.Residual`'s
    (same fit: origin of the head, principal subspace of in-distribution features); ``alpha``
    (``alpha_``) matches the mean virtual logit to the mean max-logit on the fit data. Equivalent in
    ranking to the softmax probability of the virtual logit.
    """

    needs = frozenset({"features", "logits"})

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        super()._fit(clf, outputs, labels)
        residual = self.residual(features_of(outputs))
        self.alpha_ = float(float64(outputs.logits).amax(dim=1).mean() / residual.mean().clamp_min(1e-12))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        vlogit = self.alpha_ * self.residual(features_of(outputs))
        return vlogit - torch.logsumexp(float64(outputs.logits), dim=1)
