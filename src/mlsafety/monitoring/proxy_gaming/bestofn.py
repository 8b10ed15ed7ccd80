"""Best-of-n sampling against a proxy reward: exact expectations on a finite space, and the
"sample once, reuse for every n" estimator from cached samples.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022 (section 2.2):
best-of-n draws ``n`` outputs from the initial policy ``pi0`` and keeps the one the proxy scores
highest; its KL to ``pi0`` is ``log n - (n - 1) / n`` (their eq. 2, exact for a continuous proxy
score, i.e. no ties and no atoms). On a finite output space the order statistics are exact:
with ``F(v) = P_pi0(proxy <= v)`` and ``F_-(v) = P_pi0(proxy < v)``, the selected output's proxy
equals ``v`` with probability ``F(v)^n - F_-(v)^n``; ties among draws are broken uniformly, so
within a tie group an output is selected in proportion to its ``pi0`` mass. :func:`best_of_n_exact`
gives the gold and proxy expectations and both KLs (the closed form and the exact one of the
finite best-of-n distribution; they differ where the space is coarse or ties exist).

:func:`best_of_n_from_samples` is the unbiased estimator of Nakano et al., "WebGPT: Browser-assisted
question-answering with human feedback", 2021 (appendix): from ``m`` cached samples per prompt,
the mean over all ``n``-subsets of the gold reward of the subset's proxy-argmax, which is
``sum_i C(i - 1, n - 1) / C(m, n) g_(i)`` with samples sorted by proxy (ascending). It departs from
the paper's text only in handling ties (the gold is averaged inside each tie group, the exact
value under uniform tie-breaking) and in computing every ``n`` at once from one sort per prompt.
Being a U-statistic over subsets drawn without replacement, it is unbiased for best-of-n over iid
draws from ``pi0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from mlsafety.core import InputError


def bon_kl(n: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    """The closed-form best-of-n KL, ``log n - (n - 1) / n`` (Gao et al. 2022, eq. 2), float64."""
    nt = _as_ns(n)
    return torch.log(nt) - (nt - 1.0) / nt


def _as_ns(n: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    nt = torch.as_tensor(n, dtype=torch.float64).reshape(-1)
    if nt.numel() == 0:
        raise InputError("the list of n is empty; pass at least one n >= 1")
    if (nt < 1).any() or (nt != nt.round()).any():
        raise InputError(f"every n must be an integer >= 1, got min {float(nt.min())}; pass n in 1, 2, ...")
    return nt


def _check_pair(proxy: torch.Tensor, gold: torch.Tensor, what: str) -> None:
    if not isinstance(proxy, torch.Tensor) or not isinstance(gold, torch.Tensor):
        raise InputError(
            f"proxy and gold {what} must both be tensors, got {type(proxy).__name__} and {type(gold).__name__}"
        )
    if proxy.shape != gold.shape:
        raise InputError(
            f"proxy and gold {what} must have the same shape, got {tuple(proxy.shape)} and {tuple(gold.shape)}"
        )
    if proxy.numel() == 0:
        raise InputError(f"the {what} are empty; pass at least one output")
    if not (torch.isfinite(proxy).all() and torch.isfinite(gold).all()):
        raise InputError(f"the {what} contain NaN or infinite values")


@dataclass(frozen=True)
class BestOfNCurve:
    """Exact best-of-n expectations on a finite space, one entry per ``n``.

    Attributes:
        n: (T,) the n values, float64.
        gold: (T,) E[gold reward of the proxy-argmax of n draws].
        proxy: (T,) E[proxy reward of the same].
        kl: (T,) the closed form ``log n - (n - 1) / n``.
        kl_exact: (T,) KL(best-of-n || pi0) of the finite best-of-n distribution (nats).
        probs: (T, K) the best-of-n distribution over outputs.
    """

    n: torch.Tensor
    gold: torch.Tensor
    proxy: torch.Tensor
    kl: torch.Tensor
    kl_exact: torch.Tensor
    probs: torch.Tensor

    @property
    def d(self) -> torch.Tensor:
        """sqrt of the closed-form KL, the paper's x-axis."""
        return self.kl.clamp_min(0).sqrt()

    @property
    def d_exact(self) -> torch.Tensor:
        """sqrt of the exact finite-space KL."""
        return self.kl_exact.clamp_min(0).sqrt()


def best_of_n_probs(pi0: torch.Tensor, proxy: torch.Tensor, n: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    """The exact best-of-n distribution (T, K) over K outputs for each n (ties broken uniformly).

    Args:
        pi0: (K,) base-policy probabilities (non-negative, summing to 1).
        proxy: (K,) proxy reward of each output.
        n: one n or a sequence of n values, each >= 1.
    """
    p0 = _check_pi0(pi0, proxy)
    ns = _as_ns(n)
    r = proxy.detach().double().cpu()
    order = torch.argsort(r, stable=True)
    rs, ps = r[order], p0[order]
    # tie groups in sorted order: group id per position
    new = torch.ones_like(rs, dtype=torch.bool)
    new[1:] = rs[1:] != rs[:-1]
    gid = new.cumsum(0) - 1
    mass = torch.zeros(int(gid[-1]) + 1, dtype=torch.float64).index_add_(0, gid, ps)
    # F(v) = 1 - P(proxy > v), the tail summed from the top: exact near the top, where F^n is sensitive (n F's
    # error), and F(top) = 1 exactly; the bottom's F_- is 0 exactly
    above = torch.cat([mass.flip(0).cumsum(0).flip(0)[1:], torch.zeros(1, dtype=torch.float64)])
    cdf_hi = (1.0 - above).clamp(0.0, 1.0)  # F(v) per group
    cdf_lo = torch.cat([torch.zeros(1, dtype=torch.float64), cdf_hi[:-1]])  # F_-(v)
    group_p = cdf_hi.unsqueeze(0) ** ns.unsqueeze(1) - cdf_lo.unsqueeze(0) ** ns.unsqueeze(1)  # (T, G)
    share = torch.where(mass[gid] > 0, ps / mass[gid].clamp_min(1e-300), torch.zeros_like(ps))
    sorted_probs = group_p[:, gid] * share.unsqueeze(0)
    out = torch.empty_like(sorted_probs)
    out[:, order] = sorted_probs
    return out


def _check_pi0(pi0: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    if not isinstance(pi0, torch.Tensor) or pi0.ndim != 1 or pi0.numel() == 0:
        raise InputError("pi0 must be a non-empty 1-D tensor of probabilities (K,)")
    if not isinstance(proxy, torch.Tensor) or proxy.shape != pi0.shape:
        raise InputError(f"proxy must be a tensor of pi0's shape {tuple(pi0.shape)}")
    p0 = pi0.detach().double().cpu()
    if (p0 < 0).any() or abs(float(p0.sum()) - 1.0) > 1e-6:
        raise InputError("pi0 must be non-negative and sum to 1; normalise it first")
    if not torch.isfinite(proxy).all():
        raise InputError("the proxy rewards contain NaN or infinite values")
    return p0 / p0.sum()  # exactly 1 in float64: F(v)^n at the top group is 1, not (1 +- 1e-7)^n


def _kl_rows(probs: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    ratio = probs / p0.clamp_min(1e-300)
    terms = torch.where(probs > 0, probs * torch.log(ratio.clamp_min(1e-300)), torch.zeros_like(probs))
    return terms.sum(-1).clamp_min(0.0)


def best_of_n_exact(
    pi0: torch.Tensor, proxy: torch.Tensor, gold: torch.Tensor, n: torch.Tensor | Sequence[int] | int
) -> BestOfNCurve:
    """Exact best-of-n gold and proxy expectations and KLs on a finite output space.

    Args:
        pi0: (K,) base-policy probabilities.
        proxy: (K,) proxy reward per output (the optimised one).
        gold: (K,) gold reward per output.
        n: the n values (each >= 1), e.g. ``range(1, 257)``; all are computed in one pass.

    Example:
        >>> curve = best_of_n_exact(torch.full((4,), 0.25), torch.arange(4.0), torch.arange(4.0), [1, 2])
        >>> float(curve.gold[1])  # E[max of two draws from {0, 1, 2, 3}]
        2.125
    """
    _check_pair(proxy, gold, "rewards")
    probs = best_of_n_probs(pi0, proxy, n)
    p0 = _check_pi0(pi0, proxy)
    ns = _as_ns(n)
    return BestOfNCurve(
        n=ns,
        gold=probs @ gold.detach().double().cpu(),
        proxy=probs @ proxy.detach().double().cpu(),
        kl=bon_kl(ns),
        kl_exact=_kl_rows(probs, p0),
        probs=probs,
    )


def _subset_weights(m: int, ns: torch.Tensor) -> torch.Tensor:
    """(T, m): ``C(i - 1, n - 1) / C(m, n)`` for sorted positions i = 1..m (0 where i < n)."""
    i = torch.arange(1, m + 1, dtype=torch.float64).unsqueeze(0)
    nn_ = ns.unsqueeze(1)
    valid = i >= nn_
    log_w = (
        torch.lgamma(i)
        - torch.lgamma(nn_)
        - torch.lgamma((i - nn_ + 1).clamp_min(1.0))
        - (math.lgamma(m + 1) - torch.lgamma(nn_ + 1) - torch.lgamma(m - nn_ + 1))
    )
    return torch.where(valid, log_w.exp(), torch.zeros_like(log_w))


@dataclass(frozen=True)
class BestOfNSamples:
    """Best-of-n estimates from cached samples, per prompt.

    Attributes:
        n: (T,) the n values.
        gold: (P, T) unbiased estimate of E[gold of the proxy-argmax of n draws] for each prompt.
        proxy: (P, T) the same for the proxy reward.
        kl: (T,) closed-form best-of-n KL.
    """

    n: torch.Tensor
    gold: torch.Tensor
    proxy: torch.Tensor
    kl: torch.Tensor

    @property
    def d(self) -> torch.Tensor:
        """sqrt of the closed-form KL."""
        return self.kl.clamp_min(0).sqrt()

    def mean(self, which: str = "gold", confidence: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean over prompts of ``gold`` or ``proxy`` per n with its t interval: (mean, low, high)."""
        values = {"gold": self.gold, "proxy": self.proxy}.get(which)
        if values is None:
            raise InputError(f"which must be 'gold' or 'proxy', got {which!r}")
        return mean_interval(values, confidence)


def mean_interval(values: torch.Tensor, confidence: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column means of ``values`` (S, T) over the S rows (seeds or prompts) with Student-t intervals.

    With a single row there is no spread to measure: the bounds are NaN (unknown), not the point
    itself, which would read as a mean known exactly.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise InputError("values must be 2-D (rows, points) with at least one row")
    s = v.shape[0]
    mean = v.mean(0)
    if s == 1:
        unknown = torch.full_like(mean, float("nan"))
        return mean, unknown, unknown.clone()
    half = float(stats.t.ppf(0.5 + confidence / 2, s - 1)) * v.std(0, unbiased=True) / math.sqrt(s)
    return mean, mean - half, mean + half


def best_of_n_from_samples(
    proxy: torch.Tensor, gold: torch.Tensor, n: torch.Tensor | Sequence[int] | int
) -> BestOfNSamples:
    """Unbiased best-of-n estimates for every n from one pool of ``m`` samples per prompt.

    One sort per prompt; all n values come from one (P, m) x (m, T) weighted sum, so a 256-point curve
    costs one scoring pass per sample per scorer (call it once per proxy; the weights do not
    depend on the scores).

    Args:
        proxy: (P, m) or (m,) proxy scores of m cached samples per prompt (the selection score).
        gold: same shape: the reward to average (the gold, a trusted proxy, or the proxy itself).
        n: n values, each in 1..m.

    Returns:
        :class:`BestOfNSamples` with (P, T) gold and proxy estimates.
    """
    _check_pair(proxy, gold, "scores")
    if proxy.ndim not in (1, 2):
        raise InputError(f"scores must be (m,) or (prompts, m), got {proxy.ndim} dimensions")
    s = proxy.detach().double().cpu().reshape(-1, proxy.shape[-1])
    g = gold.detach().double().cpu().reshape(-1, gold.shape[-1])
    ns = _as_ns(n)
    m = s.shape[1]
    if float(ns.max()) > m:
        raise InputError(f"n={int(ns.max())} exceeds the {m} samples per prompt; cache at least max(n) samples")
    order = torch.argsort(s, dim=1, stable=True)
    ss, gs = s.gather(1, order), g.gather(1, order)
    new = torch.ones_like(ss, dtype=torch.bool)
    new[:, 1:] = ss[:, 1:] != ss[:, :-1]
    if not bool(new.all()):
        gs = _tie_group_means(gs, new)
    w = _subset_weights(m, ns)  # (T, m)
    return BestOfNSamples(n=ns, gold=_weighted_rows(gs, w), proxy=_weighted_rows(ss, w), kl=bon_kl(ns))


_ROW_ELEMENTS = 1 << 22
"""Products of at most this many elements per chunk of prompts in :func:`_weighted_rows`."""


def _weighted_rows(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``values @ w.T`` (P, T) summed by torch's reduction over each row, not by a BLAS product: a product of this
    shape (64 prompts x 4096 samples x 13 n) split its sums by the thread count and changed the last digits between
    1 and 2 threads. torch parallelises this reduction over its (prompt, n) outputs, each summed in one thread in a
    fixed order (the same bits on 1 and 2 threads, tested); a single output of more than 32,768 samples would be
    split like any long sum."""
    p, m = values.shape
    step = max(1, _ROW_ELEMENTS // max(1, m * w.shape[0]))
    return torch.cat([(values[s : s + step, None, :] * w[None]).sum(-1) for s in range(0, p, step)])


def _tie_group_means(values: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Replace each value by the mean of its tie group (groups start where ``new`` is True)."""
    p, m = values.shape
    gid = new.long().cumsum(1) - 1 + torch.arange(p).unsqueeze(1) * m  # unique ids per row
    flat = gid.reshape(-1)
    total = torch.zeros(p * m, dtype=torch.float64).index_add_(0, flat, values.reshape(-1))
    count = torch.zeros(p * m, dtype=torch.float64).index_add_(0, flat, torch.ones(p * m, dtype=torch.float64))
    return (total[flat] / count[flat]).reshape(p, m)
