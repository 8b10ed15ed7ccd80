"""Logistic regression on the contrast difference: the supervised ceiling for the unsupervised probes.

Burns et al. (2022) report a logistic-regression probe trained with labels on the normalised hidden
states as the upper reference for CCS. Here it reads ``d = x+~ - x-~`` (the normalised difference) and
minimises the mean binary cross-entropy plus ``l2 / 2 * ||w||^2`` with L-BFGS (an unregularised
intercept).
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, register
from mlsafety.core import Param


@register("logistic", tags=("supervised",))
class Logistic(Probe):
    """Supervised logistic regression on ``x+~ - x-~``; learned ``coef_ (D,)`` and ``intercept_``."""

    supervised = True
    l2 = Param(1e-2, float, low=0.0, doc="L2 penalty on the weights (not the intercept)")
    max_iter = Param(200, int, low=1, doc="L-BFGS iterations")

    def _fit(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        assert labels is not None
        x, y = pos - neg, labels.float()
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * self.l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)  # type: ignore[arg-type]
        self.coef_ = w.detach().clone()
        self.intercept_ = float(b.detach())

    def _score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return (pos - neg) @ self.coef_ + self.intercept_
