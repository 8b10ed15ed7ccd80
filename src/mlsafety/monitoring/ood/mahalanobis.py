"""Mahalanobis distance to class-conditional Gaussians with a shared covariance (Lee et al., "A
Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", 2018)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import Detector, features_of, float64, register, reuse


def class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``(K, D)`` and the precision ``(D, D)`` of the shared (tied) covariance.

    The covariance is ``1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T``; its pseudo-inverse is
    taken in float64 so rank-deficient features (dead ReLUs) stay usable. Classes without any
    sample get the overall mean.
    """
    f = float64(features)
    counts = torch.bincount(labels, minlength=num_classes).to(f.dtype)[:, None]
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), f.mean(dim=0, keepdim=True))
    centred = f - means[labels]
    cov = centred.T @ centred / f.shape[0]
    return means, torch.linalg.pinv(cov, hermitian=True)


def mahalanobis_sq(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``(N, K)`` of every feature row to every mean."""
    f = float64(features)
    fp = f @ precision
    mp = means @ precision
    return (fp * f).sum(dim=1, keepdim=True) - 2 * fp @ means.T + (mp * means).sum(dim=1)[None, :]


def shared_class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`class_gaussians`, computed once per engine call (Mahalanobis and RMD share it)."""
    return reuse(
        "class-gaussians", (features, labels), lambda: class_gaussians(features, labels, num_classes), num_classes
    )


def shared_mahalanobis_sq(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """:func:`mahalanobis_sq`, computed once per engine call for the same fitted Gaussians."""
    return reuse("mahalanobis-sq", (features, means, precision), lambda: mahalanobis_sq(features, means, precision))


@register("mahalanobis")
class Mahalanobis(Detector):
    """Anomaly score ``min_k (f - mu_k)^T Sigma^+ (f - mu_k)`` on penultimate features ``f``.

    Fitted on labelled in-distribution data (``means_`` (K, D), ``precision_`` (D, D)). This is
    the feature-only variant used by most benchmarks: no input pre-processing, last layer only.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.means_, self.precision_ = shared_class_gaussians(features_of(outputs), labels, outputs.logits.shape[1])

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return shared_mahalanobis_sq(features_of(outputs), self.means_, self.precision_).amin(dim=1)
