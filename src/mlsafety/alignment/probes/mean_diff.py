"""Mean-difference probe: the direction between the class means of the contrast differences.

The "mass-mean" probe (Marks and Tegmark, "The Geometry of Truth", 2023): with ``d = x+~ - x-~``, the
direction is ``mean(d | true) - mean(d | false)`` and the threshold the midpoint of the two class means
projected on it. Supervised (it needs labels for the two means), but it fits nothing iteratively; every
layer is computed at once.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, linear_scores, register


@register("mean-diff", tags=("supervised",))
class MeanDiff(Probe):
    """Mean-difference probe on ``x+~ - x-~``; learned ``coef_ (D,)`` and ``intercept_``."""

    supervised = True

    def _fit_layers(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        assert labels is not None
        d = pos - neg  # (L, N, D)
        mu_true, mu_false = d[:, labels == 1].mean(1), d[:, labels == 0].mean(1)
        self.coefs_ = mu_true - mu_false
        self.intercepts_ = -(0.5 * (mu_true + mu_false) * self.coefs_).sum(-1)

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return linear_scores(pos, neg, self.coefs_, self.intercepts_)
