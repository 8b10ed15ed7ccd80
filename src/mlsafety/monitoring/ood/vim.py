"""Virtual-logit matching (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Outputs
from mlsafety.monitoring.ood.base import Detector, features_of, float64, head_of, register, reuse


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


@register("vim")
class ViM(Detector):
    """Anomaly score ``alpha * ||P_perp (f - u)|| - logsumexp(logits)``.

    ``u = -W^+ b`` is the origin of the head, ``P_perp`` projects onto the residual of the
    principal subspace of in-distribution features and ``alpha`` matches the mean virtual logit
    to the mean max-logit on the fit data. Equivalent in ranking to the softmax probability of the
    virtual logit.

    Args:
        dim: principal dimension; None uses :func:`default_dim`.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        w, b = head_of(clf)
        dim = self.dim if self.dim is not None else default_dim(f.shape[1])
        self.origin_, self.residual_basis_ = shared_basis(f, w, b, dim)
        residual = self.residual(f)
        self.alpha_ = float(float64(outputs.logits).amax(dim=1).mean() / residual.mean().clamp_min(1e-12))

    def residual(self, features: torch.Tensor) -> torch.Tensor:
        """The norm of the features' residual ``||P_perp (f - u)||`` (N,)."""
        return residual_norm(features, self.origin_, self.residual_basis_)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        vlogit = self.alpha_ * self.residual(features_of(outputs))
        return vlogit - torch.logsumexp(float64(outputs.logits), dim=1)
