"""Variational rectified activation (Xu et al., "VRA: Variational Rectified Activation for
Out-of-distribution Detection", NeurIPS 2023)."""

from __future__ import annotations

import math

import torch

from mlsafety.core import Classifier, InputError, Outputs, Param
from mlsafety.monitoring.ood.base import (
    IMAGE,
    NEEDS_HEAD_WEIGHTS,
    OPT_IN,
    TEXT,
    Detector,
    energy_of,
    features_of,
    head_of,
    register,
)

_QUANTILE_LIMIT = 16_000_000  # under torch.quantile's size limit (2^24 elements)


def _kth_quantile(f: torch.Tensor, q: float) -> float:
    """The quantile ``q`` of a flat tensor of any size, interpolated linearly as ``torch.quantile`` (and
    ``numpy.percentile``) do, from the two order statistics around ``q (n - 1)`` (``kthvalue`` has no size limit)."""
    pos = q * (f.numel() - 1)
    lo = math.floor(pos)
    below = float(f.kthvalue(lo + 1).values)
    if lo + 1 >= f.numel() or pos == lo:
        return below
    above = float(f.kthvalue(lo + 2).values)
    return below + (above - below) * (pos - lo)


def activation_quantiles(features: torch.Tensor, percentiles: tuple[float, ...]) -> list[float]:
    """Quantiles of all activations of ``features`` (N, D) at ``percentiles`` (in [0, 100]), exact at any size
    (beyond torch.quantile's limit, from order statistics: a sample would leave units out)."""
    f = features.float().flatten()
    if f.numel() > _QUANTILE_LIMIT:
        return [_kth_quantile(f, p / 100.0) for p in percentiles]
    q = torch.tensor([p / 100.0 for p in percentiles], dtype=f.dtype, device=f.device)
    return [float(v) for v in torch.quantile(f, q)]


@register("vra", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS, OPT_IN))
class VRA(Detector):
    """Anomaly score = energy of the logits recomputed from rectified features ``-logsumexp(W g(f) + b)``.

    ``g`` is the paper's piecewise rectification of each activation ``z``: ``0`` below ``a``
    (abnormally low activations suppressed), ``z + gamma`` between ``a`` and ``b`` (intermediate ones
    kept, or amplified when ``gamma > 0``: VRA+), ``b`` above ``b`` (abnormally high ones capped, as in
    ReAct). ``a`` (``low_``) and ``b`` (``high_``) are the ``low``-th and ``high``-th percentiles of all
    in-distribution feature activations.

    Deviations: OpenOOD's VRA clips below ``a`` to ``a``; this follows the paper and zeroes them.
    ``gamma`` defaults to 0 (plain VRA); the paper tunes it per model for VRA+.

    Args:
        low: percentile of ``a`` in [0, 100) (OpenOOD's default).
        high: percentile of ``b`` in (0, 100] (OpenOOD's default), above ``low``.
        gamma: amplification added to the kept activations (VRA+; 0: VRA).
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    low = Param(10.0, float, low=0, high=100, high_open=True, doc="percentile below which activations are zeroed")
    high = Param(90.0, float, low=0, high=100, low_open=True, doc="percentile at which activations are capped")
    gamma = Param(0.0, float, low=0, doc="added to the kept activations (VRA+; 0: VRA)")

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise InputError(f"vra low must be below high, got low={self.low:g}, high={self.high:g}")

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        self.low_, self.high_ = activation_quantiles(features_of(outputs), (self.low, self.high))

    def rectify(self, features: torch.Tensor) -> torch.Tensor:
        """``g(f)`` (N, D): zero below ``low_``, ``f + gamma`` in between, ``high_`` above."""
        f = features.float()
        kept = torch.where(f < self.low_, torch.zeros_like(f), f + self.gamma)
        return torch.where(f > self.high_, torch.full_like(f, self.high_), kept)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        w, b = head_of(clf)
        g = self.rectify(features_of(outputs))
        return energy_of(g @ w.T.to(g) + b.to(g))
