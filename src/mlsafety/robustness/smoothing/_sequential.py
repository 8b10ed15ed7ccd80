"""Sequential certification: a time-uniform confidence sequence and the sampling loop that stops on it.

The beta-binomial mixture martingale (Robbins, "Statistical methods related to the law of the
iterated logarithm", 1970; Howard et al., "Time-uniform, nonparametric, nonasymptotic confidence
sequences", 2021) bounds a Bernoulli mean at every sample size at once, so sampling may stop as soon
as the bound decides the question, and the error rate stays at ``alpha``; naive repeated
Clopper-Pearson tests would not keep it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def beta_binomial_cs(
    k: torch.Tensor, n: torch.Tensor, alpha: float, prior: tuple[float, float] = (1.0, 1.0), iters: int = 60
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-uniform (1 - alpha) confidence sequence for a Bernoulli mean (beta-binomial mixture).

    ``{p : B(a + k, b + n - k) / B(a, b) < p^k (1 - p)^(n - k) / alpha}``, the ``p`` at which the
    mixture martingale is still below ``1 / alpha``; by Ville's inequality it covers the true mean at
    every ``n`` simultaneously with probability ``1 - alpha``, so it may be checked after every batch
    and sampling stopped at any data-dependent time. Endpoints are found by
    bisection on each side of ``k / n`` (the log-likelihood is concave). Returns float64 (lower, upper).
    """
    kd, nd = k.double(), n.double()
    a, b = prior
    log_mix = torch.lgamma(a + kd) + torch.lgamma(b + nd - kd) - torch.lgamma(a + b + nd)
    log_mix = log_mix - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    level = log_mix + math.log(alpha)  # p is inside when loglik(p) > level
    phat = kd / nd.clamp_min(1)

    def loglik(p: torch.Tensor) -> torch.Tensor:
        return torch.xlogy(kd, p) + torch.xlogy(nd - kd, 1 - p)

    def solve(lo: torch.Tensor, hi: torch.Tensor, inside_at_hi: bool) -> torch.Tensor:
        for _ in range(iters):
            mid = (lo + hi) / 2
            inside = loglik(mid) > level
            if inside_at_hi:
                hi, lo = torch.where(inside, mid, hi), torch.where(inside, lo, mid)
            else:
                lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
        return lo if inside_at_hi else hi

    zero, one = torch.zeros_like(phat), torch.ones_like(phat)
    lower = solve(zero, phat, inside_at_hi=True)
    upper = solve(phat, one, inside_at_hi=False)
    lower = torch.where(loglik(zero) > level, zero, lower)
    upper = torch.where(loglik(one) > level, one, upper)
    return lower, upper


def sample_until_decided(
    hits: Callable[[torch.Tensor, int], torch.Tensor],
    n_in: int,
    n_max: int,
    alpha: float,
    target: float,
    batch_size: int,
    prior: tuple[float, float],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw Bernoulli samples for ``n_in`` inputs until :func:`beta_binomial_cs` decides each against ``target``.

    Samples are drawn for the inputs still undecided, in steps that fill ``batch_size`` and also grow
    with the samples drawn, so the bound is checked O(log n_max) times per input (any checking schedule
    is valid for a confidence sequence). An input stops when its lower bound exceeds ``target``, its
    upper bound falls below it, or after ``n_max`` samples.

    Args:
        hits: ``hits(idx, step)`` draws ``step`` samples for each input in ``idx`` and returns their
            success counts (len(idx),).
        n_in: number of inputs.
        n_max: most samples per input.
        alpha: error probability of the confidence sequence.
        target: the probability each input's mean is compared with.
        batch_size: samples per draw to aim for across the undecided inputs.
        prior: Beta prior ``(a, b)`` of the mixture.
        device: where the counts live.

    Returns:
        float64 lower bounds at the stopping times, and int64 samples used, both (n_in,).
    """
    successes = torch.zeros(n_in, dtype=torch.long, device=device)
    used = torch.zeros(n_in, dtype=torch.long, device=device)
    lower = torch.zeros(n_in, dtype=torch.float64, device=device)
    active = torch.ones(n_in, dtype=torch.bool, device=device)
    while bool(active.any()):
        idx = active.nonzero()[:, 0]
        grow = max(batch_size // idx.numel(), int(used[idx].min()) // 4, 1)
        step = min(grow, int((n_max - used[idx]).min()))
        successes[idx] += hits(idx, step)
        used[idx] += step
        lo, hi = beta_binomial_cs(successes[idx], used[idx], alpha, prior)
        lower[idx] = lo
        done = (lo > target) | (hi < target) | (used[idx] >= n_max)
        active[idx[done]] = False
    return lower, used
