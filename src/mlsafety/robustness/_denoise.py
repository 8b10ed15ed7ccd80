"""A small residual denoiser for denoised smoothing, and its training recipe.

Denoised smoothing (Salman et al., "Denoised Smoothing: A Provable Defense for Pretrained
Classifiers", 2020) puts a denoiser ``D`` in front of an off-the-shelf classifier ``f`` and
certifies ``f(D(x + e))``. Any module that maps noisy inputs to clean ones plugs into
``SmoothedClassifier(denoiser=...)``; a diffusion model's one-shot denoise (Carlini et al. 2023)
is one such module. This file gives a tiny convolutional one for the embedded data, trained with
the mean-squared error between ``D(x + e)`` and ``x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import ArrayDataset, InputError, Progress, generator, randn_like, track


class ConvDenoiser(nn.Module):
    """Residual CNN denoiser: ``x_noisy - r(x_noisy)``, clamped to [0, 1].

    Args:
        channels: input channels.
        width: feature maps per hidden layer.
        depth: number of hidden 3x3 convolutions.
    """

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.residual(x)).clamp(0, 1)


def train_denoiser(
    denoiser: nn.Module,
    data: ArrayDataset,
    sigma: float,
    epochs: int = 60,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``denoiser`` to map ``x + N(0, sigma^2)`` back to ``x`` (MSE, Adam, cosine schedule), seeded.

    Returns the denoiser in eval mode.
    """
    if len(data) == 0:
        raise InputError("cannot train a denoiser on an empty dataset")
    if not sigma > 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    device = next(denoiser.parameters()).device
    g = generator(seed, "denoiser", sigma)
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    denoiser.train()
    for _ in track(range(epochs), progress, "training denoiser", total=epochs):
        perm = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), batch_size):
            xb = data.x[perm[start : start + batch_size]].to(device)
            noisy = xb + randn_like(xb, g) * sigma
            loss = F.mse_loss(denoiser(noisy), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return denoiser.eval()


def train_digits_denoiser(sigma: float, seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe behind the shipped ``digits-denoiser-<100 sigma>`` weights: a :class:`ConvDenoiser`
    trained on the digits train split for one noise level (deterministic on the CPU)."""
    from mlsafety.zoo import load_dataset, seeded_init

    model = seeded_init(ConvDenoiser(), seed, "digits-denoiser", sigma)
    return train_denoiser(model, load_dataset("digits", "train"), sigma, epochs=30, seed=seed, progress=progress)
