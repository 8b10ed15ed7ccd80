"""Euclidean projections of TextGrad's relaxed variables, batched, by bisection on the dual variable.

TextGrad (Hou et al. 2022) relaxes site selection to ``z in [0, 1]^S`` with a budget ``sum z <= k`` and
each site's substitution to ``u_s`` on the probability simplex over its candidates; projected gradient
steps need the Euclidean projection onto each set. Both are water-filling problems whose KKT
conditions give the solution up to one scalar:

* capped simplex ``{z : 0 <= z <= 1, sum z <= k}``: ``z = clip(a - mu, 0, 1)`` with ``mu = 0`` when
  ``sum clip(a, 0, 1) <= k``, else the ``mu > 0`` for which ``sum clip(a - mu, 0, 1) = k``;
* simplex ``{u : u >= 0, sum u = 1}``: ``u = max(a - tau, 0)`` with ``sum max(a - tau, 0) = 1``.

The sum is continuous and non-increasing in the scalar, so bisection finds it to any precision
(``iters`` halvings of the bracket; 50 reach float32 resolution for inputs of order one). Entries
outside ``mask`` (padding: sites a text does not have, candidates a site does not have) are held at 0.
"""

from __future__ import annotations

import torch


def project_capped_simplex(
    a: torch.Tensor, k: torch.Tensor | float, mask: torch.Tensor, iters: int = 50
) -> torch.Tensor:
    """Project each row of ``a`` (N, S) onto ``{0 <= z <= 1, sum z <= k}`` over its masked entries.

    Args:
        a: ``(N, S)`` points to project.
        k: budget per row (a float or ``(N,)``), at least 0.
        mask: ``(N, S)`` bool, True on real entries; the others come out 0.
        iters: bisection steps.

    Returns:
        ``(N, S)`` projections.
    """
    m = mask.to(a.dtype)
    budget = torch.as_tensor(k, dtype=a.dtype, device=a.device).expand(a.shape[0])
    a = torch.where(mask, a, torch.zeros_like(a))
    z0 = a.clamp(0, 1) * m
    over = z0.sum(dim=1) > budget
    if not bool(over.any()):
        return z0
    lo = torch.zeros_like(budget)
    hi = (a * m).amax(dim=1).clamp_min(0)  # at mu = max(a) every entry is 0 <= k
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = ((a - mid[:, None]).clamp(0, 1) * m).sum(dim=1)
        big = total > budget
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    mu = torch.where(over, hi, torch.zeros_like(hi))
    return (a - mu[:, None]).clamp(0, 1) * m


def project_simplex(a: torch.Tensor, mask: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Project ``a`` (..., C) onto the probability simplex over its masked entries (last dimension).

    A row with no masked entry comes out all zeros.

    Args:
        a: ``(..., C)`` points to project.
        mask: bool of the same shape, True on real entries.
        iters: bisection steps.
    """
    m = mask.to(a.dtype)
    big_neg = torch.finfo(a.dtype).min / 4
    masked = torch.where(mask, a, torch.full_like(a, big_neg))
    hi = masked.amax(dim=-1)  # tau = max(a): the sum is 0
    lo = torch.where(mask, a, torch.full_like(a, -big_neg)).amin(dim=-1) - 1.0  # every entry >= 1 / C above it
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = ((a - mid[..., None]).clamp_min(0) * m).sum(dim=-1)
        big = total > 1
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    tau = (lo + hi) / 2
    u = (a - tau[..., None]).clamp_min(0) * m
    # Renormalise away the bisection's last rounding error (exact sum 1 on every real row).
    s = u.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, u / s.clamp_min(torch.finfo(a.dtype).tiny), u)
