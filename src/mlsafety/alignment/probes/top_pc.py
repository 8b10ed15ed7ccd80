"""Top principal component of the contrast differences: an unsupervised probe without optimisation.

Burns et al. (2022) compare CCS with the top principal component of the normalised differences
``d = x+~ - x-~`` ("contrastive representation clustering"): project ``d`` (centred) on the first right
singular vector and read "x+ is true" on one side of 0. The component's sign is arbitrary; it is fixed
without labels as for CCS (see :class:`~mlsafety.alignment.probes.base.Probe`). Every layer's
decomposition is one batched SVD.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, register


@register("top-pc", tags=("unsupervised",))
class TopPC(Probe):
    """First principal component of ``x+~ - x-~``; learned ``coef_ (D,)`` (unit norm)."""

    def _fit_layers(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        d = pos - neg
        d = d - d.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(d, full_matrices=False)  # (L, min(N, D), D)
        self.coefs_ = vh[:, 0].clone()
        self.intercepts_ = torch.zeros(len(d))

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        d = pos - neg
        return ((d - d.mean(1, keepdim=True)) @ self.coefs_[:, :, None])[:, :, 0]
