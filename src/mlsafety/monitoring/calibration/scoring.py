"""Proper scoring rules of probabilistic predictions: the multi-class Brier score and the
negative log-likelihood (per input and as means)."""

from __future__ import annotations

import torch

from mlsafety.monitoring.calibration._validate import check, row_blocks

NLL_EPS = 1e-12
"""Floor of the true-class probability in :func:`nll`: one input adds at most ``-log(1e-12) = 27.63`` nats."""


def brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score of each prediction, ``sum_k (p_k - 1[y = k])^2`` (N,), in [0, 2]."""
    p, y = check(probs, labels)
    out = torch.empty(p.shape[0], dtype=torch.float64, device=p.device)
    for rows in row_blocks(p.shape[0], p.shape[1]):
        out[rows] = brier_terms(p[rows].double(), y[rows])
    return out


def brier_terms(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (p - torch.nn.functional.one_hot(y, p.shape[1]).double()).pow(2).sum(dim=1)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean multi-class Brier score (Brier, 1950): lower is better, 0 for certain and right."""
    return float(brier_per_sample(probs, labels).mean())


def nll_per_sample(probs: torch.Tensor, labels: torch.Tensor, eps: float = NLL_EPS) -> torch.Tensor:
    """``-log max(p_y, eps)`` of each prediction (N,): at most ``-log(eps)`` (27.63 nats by default)."""
    p, y = check(probs, labels)
    return -p.gather(1, y[:, None])[:, 0].double().clamp_min(eps).log()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (nats), with ``p_y`` floored at ``1e-12``.

    The floor (:data:`NLL_EPS`) caps one input's term at ``-log(1e-12) = 27.63`` nats, so a model
    that gives a true class probability 0 (a float64 softmax underflows below about ``1e-308``)
    has a finite NLL. Where some ``p_y < 1e-12`` the result is therefore *lower* than the true
    mean ``-log p_y`` (by ``log(1e-12 / p_y) / N`` per such input); with float32 probabilities,
    which cannot hold values below about ``1e-45``, the cap is what bounds the term anyway.
    Compare NLLs across tools only when neither has inputs below the floor.
    """
    return float(nll_per_sample(probs, labels).mean())
