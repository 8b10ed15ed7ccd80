"""Class-conditional Gaussian mixtures on penultimate features (the GMM baseline of OpenOOD, Yang et al.,
"OpenOOD: Benchmarking Generalized Out-of-Distribution Detection", NeurIPS 2022 Datasets and Benchmarks)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, TEXT, Detector, features_of, register
from mlsafety.monitoring.ood.engine import float64

_FLOATS = 1 << 22
"""Whitened offsets held at once when scoring (32 MB of float64)."""


@register("gmm", tags=(IMAGE, TEXT, OPT_IN))
class GMM(Detector):
    """Anomaly score ``-max_c log p(f | c)``, each class's feature density a Gaussian mixture.

    For every class ``c`` a mixture of ``components`` Gaussians (scikit-learn's EM, k-means start,
    seeded) is fitted to the features of the fit inputs of that class (labels, or predictions where
    there are none); the score is minus the largest class log-likelihood (the normalising constants
    included). Scoring runs in torch from the fitted means, Cholesky factors of the precisions and
    mixture weights (``means_`` (C, M, D), ``prec_chol_`` (C, M, D, D), ``log_weights_`` (C, M); a
    class with fewer fit inputs than ``components`` gets as many components as inputs, padded with
    weight 0; a class with no fit input is left out of the max).

    Deviations from OpenOOD's baseline: one mixture per class (OpenOOD fits one tied-covariance mixture
    over all features after a dimension reduction and scores its likelihood without normalising
    constants), so the score is a class-conditional density, as the Mahalanobis family's.

    Args:
        components: mixture components per class.
        covariance: ``"full"`` or ``"diag"`` covariance of each component.
        reg_covar: added to the covariance diagonals (scikit-learn's regularisation), in squared
            feature units.
        seed: seed of the k-means initialisation.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    components = Param(1, int, low=1, doc="Gaussian components per class")
    covariance = Param("full", str, choices=("full", "diag"), doc="covariance of each component")
    reg_covar = Param(1e-6, float, low=0, low_open=True, doc="added to the covariance diagonals")
    seed = Param(0, int, doc="seed of the k-means initialisation")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = float64(features_of(outputs)).cpu().numpy()
        y = labels.cpu().numpy()
        k, d = outputs.logits.shape[1], f.shape[1]
        means = np.zeros((k, self.components, d))
        chol = np.tile(np.eye(d), (k, self.components, 1, 1))
        log_w = np.full((k, self.components), -np.inf)
        for c in range(k):
            fc = f[y == c]
            if fc.shape[0] == 0:
                continue
            m = min(self.components, fc.shape[0])
            gm = GaussianMixture(m, covariance_type=self.covariance, reg_covar=self.reg_covar, random_state=self.seed)
            gm.fit(fc)
            means[c, :m] = gm.means_
            pc = gm.precisions_cholesky_
            chol[c, :m] = pc if self.covariance == "full" else np.stack([np.diag(v) for v in pc])
            log_w[c, :m] = np.log(gm.weights_)
        device = outputs.logits.device
        self.means_ = torch.from_numpy(means).to(device)
        self.prec_chol_ = torch.from_numpy(chol).to(device)
        self.log_weights_ = torch.from_numpy(log_w).to(device)

    def class_log_likelihoods(self, features: torch.Tensor) -> torch.Tensor:
        """``log p(f | c)`` (N, C) of features ``(N, D)`` (``-inf`` for a class without fit inputs).

        Every component's whitened offset ``(f - mu) L`` is ``f L - mu L``: one matrix product of the features with
        all the components' Cholesky factors side by side (in row blocks of at most ``_FLOATS`` numbers), instead of
        one product per component (the same numbers to float64 rounding)."""
        f = float64(features)
        means, chol, log_w = self.means_.to(f.device), self.prec_chol_.to(f.device), self.log_weights_.to(f.device)
        k, m, d = means.shape
        const = -0.5 * d * math.log(2 * math.pi)
        log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)  # (C, M): log |P|^(1/2)
        present = torch.isfinite(log_w[:, 0]).nonzero().reshape(-1)  # a class without fit inputs stays out of the
        # logsumexp (its gradient would be NaN)
        factors = chol[present]  # (P, M, D, D)
        width = factors.shape[0] * m * d
        side_by_side = factors.permute(2, 0, 1, 3).reshape(d, width)  # (D, P M D)
        offsets = torch.einsum("pmd,pmde->pme", means[present], factors).reshape(width)  # mu L per component
        base = const + log_det[present] + log_w[present]  # (P, M)
        per_class = []
        for fb in f.split(max(1, _FLOATS // max(1, width))):
            z = (fb @ side_by_side - offsets).view(fb.shape[0], -1, m, d)
            per_class.append(torch.logsumexp(base - 0.5 * z.square().sum(dim=3), dim=2))
        out = torch.full((f.shape[0], k), -torch.inf, dtype=f.dtype, device=f.device)
        return out.index_copy(1, present, torch.cat(per_class))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return -self.class_log_likelihoods(features_of(outputs)).amax(dim=1)
