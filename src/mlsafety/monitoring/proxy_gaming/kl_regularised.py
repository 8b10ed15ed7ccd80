"""The KL-regularised optimum ``pi_lambda ~ pi0 exp(r / lambda)``, exactly, on a finite space.

The policy that maximises ``E_pi[r] - lambda KL(pi || pi0)`` is ``pi0 exp(r / lambda) / Z`` (the
RL-with-KL-penalty optimum; Korbak, Perez & Buckley, "RL with KL penalties is better viewed as
Bayesian inference", 2022). Sweeping ``lambda`` from large (``pi0``) to small (the proxy argmax)
traces the limit of RL against the proxy that Gao, Schulman & Hilton, "Scaling Laws for Reward
Model Overoptimization", 2022, approach with PPO. Here it is exact: no optimiser, no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError


@dataclass(frozen=True)
class TiltedCurve:
    """Exact expectations of the tilted policies, one entry per lambda.

    Attributes:
        lam: (T,) the lambdas.
        gold: (T,) E_{pi_lambda}[gold]; ``proxy`` likewise.
        kl: (T,) KL(pi_lambda || pi0) in nats.
        probs: (T, K) the policies.
    """

    lam: torch.Tensor
    gold: torch.Tensor
    proxy: torch.Tensor
    kl: torch.Tensor
    probs: torch.Tensor

    @property
    def d(self) -> torch.Tensor:
        """sqrt(KL), the paper's x-axis."""
        return self.kl.clamp_min(0).sqrt()


def kl_regularised(
    pi0: torch.Tensor, proxy: torch.Tensor, gold: torch.Tensor, lam: torch.Tensor | Sequence[float] | float
) -> TiltedCurve:
    """Gold, proxy and KL of ``pi_lambda ~ pi0 exp(proxy / lambda)`` for every lambda.

    Args:
        pi0: (K,) base-policy probabilities.
        proxy: (K,) the reward being optimised.
        gold: (K,) the reward we care about.
        lam: lambda values, each > 0 (``inf`` gives ``pi0``).

    ``KL = E_pi[r] / lambda - log Z`` with ``log Z = logsumexp(log pi0 + r / lambda)``, computed in
    float64 for all lambdas at once.
    """
    for name, t in (("pi0", pi0), ("proxy", proxy), ("gold", gold)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a tensor, got {type(t).__name__}")
    if pi0.ndim != 1 or pi0.numel() == 0 or proxy.shape != pi0.shape or gold.shape != pi0.shape:
        raise InputError("pi0, proxy and gold must be non-empty 1-D tensors of one shape (K,)")
    lams = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if lams.numel() == 0 or (lams <= 0).any() or torch.isnan(lams).any():
        raise InputError("every lambda must be > 0 (pass inf for pi0 itself)")
    p0 = pi0.detach().double().cpu()
    if (p0 < 0).any() or abs(float(p0.sum()) - 1.0) > 1e-6:
        raise InputError("pi0 must be non-negative and sum to 1; normalise it first")
    p0 = p0 / p0.sum()  # the tilted policy is normalised, so its KL is against a normalised pi0 (float32 sums off 1e-7)
    r = proxy.detach().double().cpu()
    g = gold.detach().double().cpu()
    if not (torch.isfinite(r).all() and torch.isfinite(g).all()):
        raise InputError("proxy and gold must be finite everywhere; drop or fix the non-finite rewards")
    log_p0 = torch.log(p0)  # -inf where pi0 = 0: those outputs stay impossible
    tilt = r.unsqueeze(0) / lams.unsqueeze(1)  # (T, K)
    logits = log_p0.unsqueeze(0) + tilt
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    log_p = logits - log_z
    probs = log_p.exp()
    safe = torch.where(probs > 0, log_p - log_p0.unsqueeze(0), torch.zeros_like(log_p))
    kl = (probs * safe).sum(1).clamp_min(0.0)
    return TiltedCurve(lam=lams, gold=probs @ g, proxy=probs @ r, kl=kl, probs=probs)
