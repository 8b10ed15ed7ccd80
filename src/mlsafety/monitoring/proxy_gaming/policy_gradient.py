"""REINFORCE on a softmax policy over a finite output space, optimising a proxy reward.

Williams, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning", 1992 (REINFORCE with a baseline: here the batch's mean reward, leave-one-out so that it
does not depend on the sample it centres). Gao, Schulman & Hilton, "Scaling Laws for Reward Model
Overoptimization", 2022, use PPO on a language model; on a finite space the policy is
``softmax(log pi0 + features @ theta)`` with ``theta = 0`` at the start (``features=None`` uses
one-hot features: a free logit per output), and at every checkpoint the gold,
the proxy and KL(pi || pi0) are computed exactly (no evaluation samples). An optional KL penalty
``kl_coef`` subtracts ``kl_coef * log(pi / pi0)`` from the reward, as the paper's RL runs may.

This is a plain torch optimiser loop, not :func:`mlsafety.core.train`: that loop trains a model on
a fixed labelled dataset with a supervised loss, whereas here the data are the policy's own
samples, redrawn at every step, and the loss is the score-function estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import InputError, generator


@dataclass(frozen=True)
class PolicyGradientRun:
    """Checkpoints of one REINFORCE run.

    Attributes:
        step: (C,) optimiser steps at each checkpoint (0 is the initial policy).
        gold: (C,) exact E_pi[gold]; ``proxy`` likewise.
        kl: (C,) exact KL(pi || pi0) in nats.
    """

    step: torch.Tensor
    gold: torch.Tensor
    proxy: torch.Tensor
    kl: torch.Tensor

    @property
    def d(self) -> torch.Tensor:
        """sqrt(KL)."""
        return self.kl.clamp_min(0).sqrt()


def reinforce(
    pi0: torch.Tensor,
    proxy: torch.Tensor,
    gold: torch.Tensor,
    features: torch.Tensor | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.05,
    kl_coef: float = 0.0,
    checkpoint_every: int = 10,
    seed: int = 0,
) -> PolicyGradientRun:
    """Train ``softmax(log pi0 + features @ theta)`` on ``proxy`` with REINFORCE and Adam.

    Args:
        pi0: (K,) base-policy probabilities (all > 0: a softmax cannot start at a zero).
        proxy: (K,) the reward optimised; ``gold``: (K,) the reward watched.
        features: (K, F) policy features, or None for a tabular policy (one logit per output).
        steps: optimiser steps.
        batch_size: samples per step (>= 2, for the leave-one-out baseline).
        lr: Adam's learning rate.
        kl_coef: weight of the per-sample KL penalty (0: none).
        checkpoint_every: steps between checkpoints (the last step is always one).
        seed: seeds the policy's samples.
    """
    if not all(isinstance(t, torch.Tensor) for t in (pi0, proxy, gold)):
        raise InputError("pi0, proxy and gold must be tensors")
    if pi0.ndim != 1 or pi0.numel() < 2 or proxy.shape != pi0.shape or gold.shape != pi0.shape:
        raise InputError("pi0, proxy and gold must be 1-D tensors of one shape (K,), K >= 2")
    if steps < 1 or batch_size < 2 or checkpoint_every < 1 or lr <= 0 or kl_coef < 0:
        raise InputError("steps >= 1, batch_size >= 2, checkpoint_every >= 1, lr > 0 and kl_coef >= 0 are required")
    p0 = pi0.detach().double().cpu()
    if (p0 <= 0).any():
        raise InputError("pi0 must be > 0 everywhere for a softmax policy; drop the impossible outputs")
    log_p0 = torch.log(p0 / p0.sum())
    r = proxy.detach().double().cpu()
    g_r = gold.detach().double().cpu()
    if features is not None and (
        not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != p0.numel()
    ):
        raise InputError(f"features must be a (K, F) tensor with K={p0.numel()} rows")
    phi = features.detach().double().cpu() if features is not None else None
    theta = torch.zeros(phi.shape[1] if phi is not None else p0.numel(), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)

    def log_policy() -> torch.Tensor:
        return torch.log_softmax(log_p0 + (phi @ theta if phi is not None else theta), 0)

    gen = generator(seed, "reinforce", p0.numel(), steps, batch_size)
    rows: list[tuple[int, float, float, float]] = []

    def record(step: int) -> None:
        with torch.no_grad():
            log_p = log_policy()
            p = log_p.exp()
            rows.append((step, float(p @ g_r), float(p @ r), float((p * (log_p - log_p0)).sum().clamp_min(0))))

    record(0)
    for step in range(1, steps + 1):
        log_p = log_policy()
        with torch.no_grad():
            idx = torch.multinomial(log_p.exp(), batch_size, replacement=True, generator=gen)
            reward = r[idx] - kl_coef * (log_p[idx] - log_p0[idx])
            baseline = (reward.sum() - reward) / (batch_size - 1)
            advantage = reward - baseline
        loss = -(advantage * log_p[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % checkpoint_every == 0 or step == steps:  # the final policy always: the run's end point
            record(step)
    t = torch.tensor(rows, dtype=torch.float64)
    return PolicyGradientRun(step=t[:, 0].long(), gold=t[:, 1], proxy=t[:, 2], kl=t[:, 3])
