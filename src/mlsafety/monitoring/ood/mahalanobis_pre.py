"""Mahalanobis distance with input pre-processing (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, equation 4)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, preprocessed_scores, register
from mlsafety.monitoring.ood.engine import collect_outputs, labels_or_pred
from mlsafety.monitoring.ood.mahalanobis import class_gaussians, mahalanobis_sq, whitening


@register("mahalanobis-pre", tags=(IMAGE, OPT_IN))
class MahalanobisPre(Detector):
    """Anomaly score ``min_k d_k(x')`` with ``x' = clip(x - eps * sign(grad_x d_c(x)), 0, 1)``.

    ``d_k(x) = (f(x) - mu_k)^T Sigma^+ (f(x) - mu_k)`` is the squared Mahalanobis distance of the
    penultimate features (the head's input) to class ``k``'s Gaussian (class means and one tied covariance,
    fitted on in-distribution data with labels, the predictions where there are none), and ``c`` the closest
    class of ``x``. The step lowers the distance to the closest class, which moves in-distribution inputs
    closer than OOD ones (the paper adds ``eps * sign(grad_x M(x))`` with ``M = -d_c``: the same step).
    ``eps`` is in [0, 1] pixel units (the model owns its normalisation; the paper's is in normalised
    units) and ``x'`` is clipped to [0, 1]. One gradient with respect to the input per batch.

    Deviations: the penultimate layer only (the paper's feature ensemble over layers is
    :class:`~mlsafety.monitoring.ood.mds_ensemble.MDSEnsemble`, without pre-processing); ``eps`` is not tuned
    (the paper tunes it on validation data; ``mlsafety.monitoring.ood.tune`` can, on synthetic outliers).

    Args:
        eps: the step size (0 turns the pre-processing off: plain Mahalanobis).
    """

    needs = frozenset({"features", "logits", "input-grad"})
    requires_fit = True

    eps = Param(0.0014, float, low=0, doc="input step eps in pixel units (0: no pre-processing)")

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        outputs, labels = collect_outputs(clf, (x, y) if y is not None else x)
        f = outputs.features
        if f is None:
            clf.features_and_logits(x[:1].to(clf.device))  # raises the one-line error about the missing head
        assert f is not None
        self.means_, self.precision_ = class_gaussians(f, labels_or_pred(labels, outputs), outputs.logits.shape[1])
        self.whitening_ = whitening(self.means_, self.precision_)

    def _distances(self, clf: Classifier, x: torch.Tensor) -> torch.Tensor:
        f, _ = clf.features_and_logits(x)
        return mahalanobis_sq(f, self.means_, self.precision_, self.whitening_)

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        return preprocessed_scores(
            clf, x, batch_size, self.eps,
            objective=lambda xg: -self._distances(clf, xg).amin(dim=1),  # lower the smallest distance
            score=lambda xb: self._distances(clf, xb).amin(dim=1),
        )  # fmt: skip
