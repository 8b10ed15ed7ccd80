"""Mahalanobis distance to class-conditional Gaussians with a shared covariance (Lee et al., "A
Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, QUICK, TEXT, Detector, features_of, register
from mlsafety.monitoring.ood.engine import float64, reuse


def class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``(K', D)`` of the ``K'`` classes with samples and the precision ``(D, D)`` of the shared
    (tied) covariance.

    The covariance is ``1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T``; its pseudo-inverse is
    taken in float64 so rank-deficient features (dead ReLUs) stay usable. A class without any
    sample (e.g. one the model never predicts, when predictions stand in for labels) has no Gaussian
    and is left out: giving it one at the overall mean would invent an in-distribution mode there, and
    the minimum distance over classes would call inputs near the centre of the features typical.
    """
    f = float64(features)
    counts = torch.bincount(labels, minlength=num_classes).to(f.dtype)[:, None]
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    means = sums / counts.clamp_min(1)
    centred = f - means[labels]
    cov = centred.T @ centred / f.shape[0]
    return means[counts[:, 0] > 0], torch.linalg.pinv(cov, hermitian=True)


Whitening: TypeAlias = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A whitening factor (D, r), a centre (D,) and the whitened centred means (K, r)."""


def whitening(means: torch.Tensor, precision: torch.Tensor) -> Whitening:
    """A factor ``W`` (D, r) with ``W W^T = precision`` (r = its rank), a centre ``c`` (D,) and the
    whitened, centred means ``(means - c) W`` (K, r), all float64.

    Distances then need one product of the features with ``W``; dropping the null space (e.g. of
    dead ReLUs) makes it smaller, and centring keeps the numbers small.
    """
    vals, vecs = torch.linalg.eigh(precision)
    keep = vals > vals.abs().amax() * precision.shape[0] * torch.finfo(vals.dtype).eps
    factor = vecs[:, keep] * vals[keep].sqrt()
    centre = means.mean(dim=0)
    return factor, centre, (means - centre) @ factor


def mahalanobis_sq(
    features: torch.Tensor,
    means: torch.Tensor,
    precision: torch.Tensor,
    white: Whitening | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Squared Mahalanobis distances ``(N, K)`` of every feature row to every mean.

    The features are whitened in ``dtype`` (the costly product; float32 by default: a distance's relative
    error is then ~1e-7 of itself, which ranks inputs as float64 does) and the distances summed in float64;
    ``white`` is :func:`whitening` of the Gaussians when already computed. A difference of two distances
    loses the digits they share (RMD): whiten in float64 there.
    """
    factor, centre, white_means = white if white is not None else whitening(means, precision)
    f = features.to(dtype)
    z = (f - centre.to(f.dtype)) @ factor.to(f.dtype)
    cross = (z @ white_means.T.to(z.dtype)).double()  # small and well conditioned: float32 suffices
    sq = z.double().square().sum(dim=1, keepdim=True) - 2 * cross + white_means.square().sum(dim=1)
    return sq.clamp_min(0)


class PreparedMahalanobisMin:
    """``features -> mahalanobis_sq(features, ..., white).amin(dim=1)`` with the whitening's float32 copies and
    the means' squared norms taken once: equal results, bit for bit, in fewer operations per call (for
    callers that score many small batches, :meth:`Mahalanobis.prepared_scorer`). A plain object, so a
    module holding it can be copied and saved.

    ``zz - 2 * cross`` is written ``torch.sub(zz, cross, alpha=2)``: doubling is exact, so both round once
    to the same number; clamping at 0 after the minimum over classes, not before, gives the same minimum.
    """

    def __init__(self, white: Whitening) -> None:
        factor, centre, white_means = white
        self.centre, self.factor = centre.to(torch.float32), factor.to(torch.float32)
        self.means_t = white_means.T.to(torch.float32)  # the same layout as mahalanobis_sq's (the same product)
        self.means_sq = white_means.square().sum(dim=1)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.float() - self.centre) @ self.factor
        cross = (z @ self.means_t).double()
        sq = torch.sub(z.double().square().sum(dim=1, keepdim=True), cross, alpha=2).add_(self.means_sq)
        return sq.amin(dim=1).clamp_min_(0)


class _PreparedScorer:
    def __init__(self, min_sq: PreparedMahalanobisMin) -> None:
        self.min_sq = min_sq

    def __call__(self, outputs: Outputs) -> torch.Tensor:
        return self.min_sq(features_of(outputs)).float()


def shared_class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, Whitening]:
    """:func:`class_gaussians` and their :func:`whitening`, once per engine call (Mahalanobis and RMD
    share them)."""

    def compute() -> tuple[torch.Tensor, torch.Tensor, Whitening]:
        means, precision = class_gaussians(features, labels, num_classes)
        return means, precision, whitening(means, precision)

    return reuse("class-gaussians", (features, labels), compute, num_classes)


@register("mahalanobis", tags=(QUICK, IMAGE, TEXT))
class Mahalanobis(Detector):
    """Anomaly score ``min_k (f - mu_k)^T Sigma^+ (f - mu_k)`` on penultimate features ``f``.

    Fitted on labelled in-distribution data (``means_`` (K', D) of the ``K'`` classes with fit inputs,
    ``precision_`` (D, D)). This is the feature-only variant used by most benchmarks: no input
    pre-processing, last layer only.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f, k = features_of(outputs), outputs.logits.shape[1]
        self.means_, self.precision_, self.whitening_ = shared_class_gaussians(f, labels, k)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = features_of(outputs)
        return mahalanobis_sq(f, self.means_, self.precision_, self.whitening_).amin(dim=1)

    def prepared_scorer(self) -> Callable[[Outputs], torch.Tensor]:
        self._check_fitted()
        return _PreparedScorer(PreparedMahalanobisMin(self.whitening_))
