"""Mean-difference probe: the direction between the class means of the contrast differences.

The "mass-mean" probe (Marks and Tegmark, "The Geometry of Truth", 2023): with ``d = x+~ - x-~``, the
direction is ``mean(d | true) - mean(d | false)`` and the threshold the midpoint of the two class means
projected on it. Supervised (it needs labels for the two means), but it fits nothing iteratively.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, register


@register("mean-diff", tags=("supervised",))
class MeanDiff(Probe):
    """Mean-difference probe on ``x+~ - x-~``; learned ``coef_ (D,)`` and ``intercept_``."""

    supervised = True

    def _fit(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        assert labels is not None
        d = pos - neg
        mu_true, mu_false = d[labels == 1].mean(0), d[labels == 0].mean(0)
        self.coef_ = mu_true - mu_false
        self.intercept_ = -float(0.5 * (mu_true + mu_false) @ self.coef_)

    def _score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return (pos - neg) @ self.coef_ + self.intercept_
