"""OpenMax (Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import weibull_min

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, TEXT, Detector, register
from mlsafety.monitoring.ood.engine import float64


def av_distance(av: torch.Tensor, mav: torch.Tensor, kind: str, eu_weight: float) -> torch.Tensor:
    """Distances ``(N, C)`` from activation vectors ``av`` (N, K) to class means ``mav`` (C, K).

    ``kind``: ``"euclidean"``, ``"cosine"`` (``1 - cos``) or ``"eucos"`` (``eu_weight * euclidean + cosine``,
    the authors' released code).
    """
    eu = torch.cdist(av, mav)
    if kind == "euclidean":
        return eu
    cos = 1 - torch.nn.functional.normalize(av, dim=1) @ torch.nn.functional.normalize(mav, dim=1).T
    return cos if kind == "cosine" else eu_weight * eu + cos


@register("openmax", tags=(IMAGE, TEXT, OPT_IN))
class OpenMax(Detector):
    """Anomaly score = OpenMax's probability of the unknown class.

    The activation vector (AV) of an input is its logits ``v``. Fit: per class ``c``, the mean AV
    (``mav_`` (K, K)) of the fit inputs of class ``c`` that the model classifies correctly, and a
    Weibull fit (maximum likelihood, ``scipy.stats.weibull_min`` with location 0; ``shape_``,
    ``scale_`` (K,)) of the ``tail`` largest distances of those inputs to their mean. Score: for the
    ``alpha`` top-ranked classes ``i = 1..alpha`` the weight ``w_c = ((alpha + 1 - i) / alpha) *
    WeibullCDF_c(d(v, mav_c))`` (0 for the rest) recalibrates ``v'_c = v_c (1 - w_c)``; the unknown
    class's activation is ``v'_0 = sum_c v_c w_c``, and the score is ``softmax(v'_0, v'_1..K)_0``.

    Deviations: libMR's ``FitHigh`` shifts the tail before fitting; here the two-parameter Weibull is
    fitted to the raw tail distances. A class with no correctly classified fit input takes the fit
    inputs predicted as it, and a class with fewer than two distinct tail distances (no Weibull can be
    fitted) gets ``WeibullCDF = 1`` (everything lies beyond what it has seen). The paper's rejection of
    inputs whose top probability is below a threshold is a decision rule, not part of the score.
    With ``alpha = 0`` nothing is recalibrated and the score is ``1 / (1 + sum_c exp(v_c))``.

    Args:
        tail: distances per class in the Weibull fit (OpenOOD's default).
        alpha: top classes recalibrated (OpenOOD's default; capped at the number of classes).
        distance: ``"euclidean"`` (OpenOOD), ``"eucos"`` (the authors' code) or ``"cosine"``.
        eu_weight: weight of the Euclidean part of ``"eucos"`` (the authors' code).
    """

    needs = frozenset({"logits"})
    requires_fit = True

    tail = Param(20, int, low=1, doc="largest distances per class in the Weibull fit")
    alpha = Param(3, int, low=0, doc="top-ranked classes recalibrated")
    distance = Param("euclidean", str, choices=("euclidean", "eucos", "cosine"), doc="AV-to-MAV distance")
    eu_weight = Param(1 / 200, float, low=0, doc="weight of the Euclidean part of eucos")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        v = float64(outputs.logits)
        k = v.shape[1]
        pred = v.argmax(dim=1)
        labels = labels.to(v.device)
        mav = torch.zeros(k, k, dtype=v.dtype, device=v.device)
        shape = np.zeros(k)
        scale = np.zeros(k)  # 0: no Weibull (CDF taken as 1)
        for c in range(k):
            members = v[(labels == c) & (pred == c)]
            if members.shape[0] == 0:
                members = v[pred == c]
            if members.shape[0] == 0:
                continue
            mav[c] = members.mean(dim=0)
            dist = av_distance(members, mav[c : c + 1], self.distance, self.eu_weight)[:, 0]
            tail = torch.sort(dist).values[-self.tail :].cpu().numpy()
            if np.unique(tail).size >= 2 and tail.min() > 0:
                shape[c], _, scale[c] = weibull_min.fit(tail, floc=0)
        self.mav_ = mav
        self.shape_ = torch.from_numpy(shape).to(v.device)
        self.scale_ = torch.from_numpy(scale).to(v.device)

    def weibull_cdf(self, dist: torch.Tensor) -> torch.Tensor:
        """Each class's Weibull CDF at distances ``dist`` (N, K) (1 for classes without a fit)."""
        shape, scale = self.shape_.to(dist.device), self.scale_.to(dist.device)
        fitted = scale > 0
        z = dist.clamp_min(0) / torch.where(fitted, scale, torch.ones_like(scale))
        cdf = 1 - torch.exp(-z.pow(shape))
        return torch.where(fitted, cdf, torch.ones_like(cdf))

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        v = float64(outputs.logits)
        k = v.shape[1]
        alpha = min(self.alpha, k)
        rank_weight = torch.zeros_like(v)
        if alpha > 0:
            top = v.topk(alpha, dim=1).indices
            ranks = torch.arange(alpha, 0, -1, dtype=v.dtype, device=v.device) / alpha  # (alpha + 1 - i) / alpha
            rank_weight.scatter_(1, top, ranks.expand(v.shape[0], alpha))
        dist = av_distance(v, self.mav_.to(v.device), self.distance, self.eu_weight)
        w = rank_weight * self.weibull_cdf(dist)
        unknown = (v * w).sum(dim=1, keepdim=True)
        return torch.cat([unknown, v * (1 - w)], dim=1).softmax(dim=1)[:, 0]
