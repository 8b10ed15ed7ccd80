"""Residual norm (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import Detector, features_of, head_of, register
from mlsafety.monitoring.ood.vim import default_dim, residual_norm, shared_basis


@register("residual")
class Residual(Detector):
    """Anomaly score ``||P_perp (f - u)||``: the part of the feature outside the principal subspace
    of in-distribution features (ViM without the logits).

    Args:
        dim: principal dimension; None uses :func:`~mlsafety.monitoring.ood.vim.default_dim`.
    """

    needs = frozenset({"features"})
    requires_fit = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        w, b = head_of(clf)
        dim = self.dim if self.dim is not None else default_dim(f.shape[1])
        self.origin_, self.residual_basis_ = shared_basis(f, w, b, dim)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return residual_norm(features_of(outputs), self.origin_, self.residual_basis_)
