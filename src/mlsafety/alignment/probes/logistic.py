"""Logistic regression on the contrast difference: the supervised ceiling for the unsupervised probes.

Burns et al. (2022) report a logistic-regression probe trained with labels on the normalised hidden
states as the upper reference for CCS. Here it reads ``d = x+~ - x-~`` (the normalised difference) and
minimises the mean binary cross-entropy plus ``l2 / 2 * ||w||^2`` (an unregularised intercept): the
solution of scikit-learn's ``LogisticRegression(C=1 / (l2 * N))``.

Every layer is solved at once by damped Newton steps (batched Cholesky solves, float64). The optimum's
weights lie in the span of the N training differences (the penalty zeroes any component outside it), so
when N < D the problem is solved exactly in the N coordinates of a thin SVD of each layer's differences
and mapped back: ``(N + 1)``-sized systems instead of ``(D + 1)``-sized ones.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, linear_scores, register
from mlsafety.core import Param


def _objective(z1: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    logits = (z1 @ theta[:, :, None])[:, :, 0]
    return (torch.nn.functional.softplus(logits) - y * logits).mean(-1) + 0.5 * (reg * theta * theta).sum(-1)


def logistic_newton(
    x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 100, tol: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-penalised logistic regression for L problems at once; ``coef (L, D)`` and ``intercept (L,)``.

    Args:
        x: features ``(L, N, D)``; y: 0/1 labels ``(N,)`` shared by the L problems.
        l2: penalty on the weights (not the intercept); max_iter: Newton steps at most; tol: stop when every
            gradient coordinate is below it.
    """
    n_layers, n, d = x.shape
    xd = x.double()
    basis = None
    if n < d:  # solve in the span of the rows: features x V (L, N, N), weights V beta
        _, _, vh = torch.linalg.svd(xd, full_matrices=False)
        basis = vh  # (L, N, D)
        xd = xd @ vh.transpose(1, 2)
    k = xd.shape[2]
    z1 = torch.cat([xd, torch.ones(n_layers, n, 1, dtype=xd.dtype)], -1)
    yd = y.double()[None, :]
    reg = torch.full((k + 1,), float(l2), dtype=xd.dtype)
    reg[-1] = 0.0
    jitter = 1e-10 * torch.eye(k + 1, dtype=xd.dtype)
    theta = torch.zeros(n_layers, k + 1, dtype=xd.dtype)
    value = _objective(z1, yd, theta, reg)
    for _ in range(max_iter):
        p = torch.sigmoid((z1 @ theta[:, :, None])[:, :, 0])
        grad = (z1.transpose(1, 2) @ (p - yd)[:, :, None])[:, :, 0] / n + reg * theta
        if float(grad.abs().max()) < tol:
            break
        s = p * (1 - p) / n
        hess = z1.transpose(1, 2) @ (z1 * s[:, :, None]) + torch.diag(reg) + jitter
        step = torch.cholesky_solve(grad[:, :, None], torch.linalg.cholesky(hess))[:, :, 0]
        t = torch.ones(n_layers, dtype=xd.dtype)
        for _ in range(40):  # halve the step of each problem whose objective did not fall
            trial = theta - t[:, None] * step
            new = _objective(z1, yd, trial, reg)
            ok = new <= value + 1e-12 * value.abs()
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        theta, value = trial, new
    coef = theta[:, :k]
    if basis is not None:
        coef = (coef[:, None, :] @ basis)[:, 0]
    return coef.float(), theta[:, k].float()


@register("logistic", tags=("supervised",))
class Logistic(Probe):
    """Supervised logistic regression on ``x+~ - x-~``; learned ``coef_ (D,)`` and ``intercept_``."""

    supervised = True
    fits_its_items = True  # N < D: it separates the fit half at every layer, so in-sample accuracy is 1
    l2 = Param(1e-2, float, low=0.0, doc="L2 penalty on the weights (not the intercept)")
    max_iter = Param(100, int, low=1, doc="Newton steps at most")

    def _fit_layers(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        assert labels is not None
        self.coefs_, self.intercepts_ = logistic_newton(pos - neg, labels, self.l2, self.max_iter)

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return linear_scores(pos, neg, self.coefs_, self.intercepts_)
