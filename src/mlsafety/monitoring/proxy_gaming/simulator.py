"""An exact, synthetic world for reward over-optimisation: a base policy over a finite output
space, a gold reward, and proxies learned from gold-labelled samples.

Follows the set-up of Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization",
2022 (section 2): a fixed "gold" reward stands in for humans; proxies are trained on ``N`` samples
from the initial policy labelled by the gold (with label noise); both are standardised under the
initial policy so that they are on one scale. Departures (the paper uses language models): the
outputs are ``K`` feature vectors ``x ~ N(0, I_F)`` with ``pi0`` uniform over them (or any given
probabilities); the gold is a fixed random function ``g(x) = w.x - kappa sum_j q_j x_j^2`` (a
rewarded direction plus a penalty for extreme outputs, so pushing far along ``w`` eventually
hurts); a proxy of "size" ``width`` is a ridge regression on ``x`` and ``width`` random ReLU
features of ``x`` (Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", 2007), so
larger proxies and more data approximate the gold better. Everything is exact on the finite
space: no sampling noise beyond the proxy's training sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import InputError, generator


def standardise(reward: torch.Tensor, pi0: torch.Tensor) -> torch.Tensor:
    """``(r - E_pi0 r) / sd_pi0 r``: zero mean and unit variance under ``pi0`` (as in the paper)."""
    r = reward.double()
    p = pi0.double()
    mean = (p * r).sum()
    var = (p * (r - mean) ** 2).sum()
    if float(var) <= 1e-12 * (float(mean) ** 2 + 1.0):
        raise InputError("the reward is constant under pi0; it cannot be standardised")
    return (r - mean) / var.sqrt()


@dataclass(frozen=True)
class World:
    """A finite output space with its base policy and gold reward.

    Attributes:
        features: (K, F) output features.
        pi0: (K,) base-policy probabilities.
        gold: (K,) gold reward, standardised under ``pi0``.
        seed: the seed the world was drawn with.
    """

    features: torch.Tensor
    pi0: torch.Tensor
    gold: torch.Tensor
    seed: int

    @property
    def num_outputs(self) -> int:
        """K, the number of outputs."""
        return int(self.pi0.numel())


def make_world(
    num_outputs: int = 4096,
    num_features: int = 16,
    curvature: float = 0.35,
    seed: int = 0,
) -> World:
    """Draw a world: K outputs with Gaussian features, ``pi0`` uniform, and a random gold reward.

    Args:
        num_outputs: K, the size of the output space.
        num_features: F, features per output.
        curvature: kappa, the weight of the penalty on extreme outputs (0: a linear gold that a
            linear proxy can match, no over-optimisation in the limit of data).
        seed: seeds the features and the gold's coefficients.
    """
    if num_outputs < 2 or num_features < 1:
        raise InputError(f"a world needs at least 2 outputs and 1 feature, got {num_outputs} and {num_features}")
    if curvature < 0:
        raise InputError(f"curvature must be >= 0, got {curvature}")
    g = generator(seed, "proxy-gaming-world")
    x = torch.randn(num_outputs, num_features, generator=g, dtype=torch.float64)
    w = torch.randn(num_features, generator=g, dtype=torch.float64)
    w = w / w.norm()
    q = torch.rand(num_features, generator=g, dtype=torch.float64) + 0.5
    raw = x @ w - curvature * (x * x) @ q
    pi0 = torch.full((num_outputs,), 1.0 / num_outputs, dtype=torch.float64)
    return World(features=x, pi0=pi0, gold=standardise(raw, pi0), seed=seed)


def _random_features(x: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    f = x.shape[1]
    a = torch.randn(f, width, generator=g, dtype=torch.float64) / f**0.5
    b = torch.randn(width, generator=g, dtype=torch.float64)
    return torch.cat([x, torch.relu(x @ a + b)], dim=1)


def train_proxy(
    world: World,
    num_labels: int,
    width: int = 0,
    label_noise: float = 0.5,
    ridge: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """A proxy reward (K,) learned from ``num_labels`` gold-labelled draws from ``pi0``.

    Ridge regression (with an unpenalised intercept) on ``x`` plus ``width`` random ReLU features,
    fitted to ``gold + label_noise * N(0, 1)`` on ``num_labels`` outputs drawn iid from ``pi0``;
    the result is standardised under ``pi0``.

    Args:
        world: the world from :func:`make_world`.
        num_labels: N, the proxy's training-set size (>= 2).
        width: random features beyond the linear ones (0: a linear proxy).
        label_noise: standard deviation of the label noise (in gold standard deviations).
        ridge: the L2 penalty.
        seed: seeds the training sample, the noise and the random features (one proxy per seed).
    """
    if num_labels < 2:
        raise InputError(f"a proxy needs at least 2 labels, got {num_labels}")
    if width < 0 or label_noise < 0 or ridge <= 0:
        raise InputError("width and label_noise must be >= 0 and ridge > 0")
    g = generator(seed, "proxy-gaming-proxy", world.seed, num_labels, width)
    phi = _random_features(world.features, width, g)
    idx = torch.multinomial(world.pi0, num_labels, replacement=True, generator=g)
    y = world.gold[idx] + label_noise * torch.randn(num_labels, generator=g, dtype=torch.float64)
    xs = phi[idx]
    mu, ym = xs.mean(0), y.mean()
    xc = xs - mu
    coef = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(xc.shape[1], dtype=torch.float64), xc.T @ (y - ym))
    return standardise((phi - mu) @ coef + ym, world.pi0)
