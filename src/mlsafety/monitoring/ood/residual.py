"""Residual norm (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

The paper's score has two halves: the norm of the feature's residual outside the principal subspace
of in-distribution features (this detector), and the logits it is matched against (ViM, which builds
on this one).
"""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_HEAD_WEIGHTS, TEXT, Detector, features_of, head_of, register
from mlsafety.monitoring.ood.engine import float64, reuse


def default_dim(feature_dim: int) -> int:
    """The paper's choice of principal dimension: 1000 for D >= 2048, 512 for D >= 768, else D/2."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return max(1, feature_dim // 2)


def principal_residual_basis(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The origin ``u = -W^+ b`` (D,) and an orthonormal basis ``(D, D - dim)`` of the complement of
    the ``dim`` leading principal directions of ``features - u`` (uncentred covariance, as in ViM)."""
    if not 0 < dim < features.shape[1]:
        raise InputError(f"principal dimension must lie in (0, {features.shape[1]}), got {dim}")
    w, b = weight.double(), bias.double()
    origin = -(torch.linalg.pinv(w) @ b)
    centred = float64(features) - origin
    cov = centred.T @ centred / centred.shape[0]
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return origin, vecs[:, : features.shape[1] - dim]


def shared_basis(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`principal_residual_basis`, computed once per engine call (ViM and Residual share it)."""
    return reuse(
        "principal-residual-basis",
        (features,),
        lambda: principal_residual_basis(features, weight, bias, dim),
        dim,
        weight.data_ptr(),  # the head's own storage: the same head for every detector of a call
        bias.data_ptr(),
    )


def residual_norm(features: torch.Tensor, origin: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Norm of each feature row's component in the residual subspace ``(N,)``, once per engine call."""

    def compute() -> torch.Tensor:  # the product in float32, the origin's part subtracted after it
        f = features.float()
        return (f @ basis.to(f.dtype) - (origin @ basis).to(f.dtype)).norm(dim=1).double()

    return reuse("residual-norm", (features, origin, basis), compute)


@register("residual", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS))
class Residual(Detector):
    """Anomaly score ``||P_perp (f - u)||``: the part of the feature outside the principal subspace
    of in-distribution features (ViM without the logits).

    ``u = -W^+ b`` (``origin_``) is the origin of the head and ``P_perp`` projects onto
    ``residual_basis_``, the complement of the ``dim`` leading principal directions of ``f - u``.
    """

    needs = frozenset({"features"})
    requires_fit = True

    dim: Param[int | None] = Param(None, int, low=1, doc="principal dimension; None: the paper's default_dim(D)")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        w, b = head_of(clf)
        dim = self.dim if self.dim is not None else default_dim(f.shape[1])
        self.origin_, self.residual_basis_ = shared_basis(f, w, b, dim)

    def residual(self, features: torch.Tensor) -> torch.Tensor:
        """The norm of the features' residual ``||P_perp (f - u)||`` (N,), float64."""
        return residual_norm(features, self.origin_, self.residual_basis_)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return self.residual(features_of(outputs))
