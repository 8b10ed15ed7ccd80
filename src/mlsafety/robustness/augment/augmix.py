"""AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., "AugMix: A Simple Data
Processing Method to Improve Robustness and Uncertainty", 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import InputError, Param, unwrap_logits
from mlsafety.robustness.augment._ops import OPS, random_ops
from mlsafety.robustness.augment.base import Augmentation, numpy_rng, register_augmentation


def augmix(
    x: torch.Tensor,
    g: torch.Generator,
    severity: float = 3.0,
    width: int = 3,
    depth: int = -1,
    alpha: float = 1.0,
) -> torch.Tensor:
    """AugMix images: ``(1 - m) x + m sum_i w_i chain_i(x)`` with ``w ~ Dirichlet(alpha)``, ``m ~ Beta(alpha, alpha)``.

    Each of ``width`` chains applies 1-3 random operations (``depth`` of them when positive); every
    image draws its own chains, weights and ``m``.

    Args:
        x: images (N, C, H, W) in [0, 1].
        g: the generator.
        severity: the operations' strength (levels drawn in [0.1, severity] on AugMix's scale of 10).
        width: number of chains mixed.
        depth: operations per chain; -1 draws 1 to 3 per chain and image.
        alpha: Dirichlet and Beta parameter.
    """
    if width < 1 or alpha <= 0 or not 0 < severity <= 10:
        raise InputError("augmix needs width >= 1, alpha > 0 and severity in (0, 10]")
    n = x.shape[0]
    rng = numpy_rng(g)
    w = torch.as_tensor(rng.dirichlet([alpha] * width, size=n), dtype=x.dtype, device=x.device)  # (n, width)
    m = torch.as_tensor(rng.beta(alpha, alpha, size=n), dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    mix = torch.zeros_like(x)
    max_depth = depth if depth > 0 else 3
    for i in range(width):
        d = torch.full((n,), depth) if depth > 0 else torch.randint(1, 4, (n,), generator=g, device=g.device)
        chain = x
        for step in range(max_depth):
            choice = torch.randint(0, len(OPS), (n,), generator=g, device=g.device)
            choice = torch.where(step < d.to(choice.device), choice, torch.full_like(choice, -1))
            chain = random_ops(chain, choice, severity, g)
        mix = mix + w[:, i].view(-1, 1, 1, 1) * chain
    return (1 - m) * x + m * mix


def jsd_loss(logits_clean: torch.Tensor, logits_aug1: torch.Tensor, logits_aug2: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of the three predictive distributions from their mixture (batch mean)."""
    p = [F.softmax(z, dim=1) for z in (logits_clean, logits_aug1, logits_aug2)]
    log_mixture = torch.clamp((p[0] + p[1] + p[2]) / 3, 1e-7, 1).log()
    return sum(F.kl_div(log_mixture, q, reduction="batchmean") for q in p) / 3  # type: ignore[return-value]


@register_augmentation("augmix")
class AugMix(Augmentation):
    """AugMix training loss: cross-entropy on clean images + ``jsd_weight`` x JSD(clean, augmix1, augmix2).

    The three views go through the model in one batch (as the reference implementation does).

    ``jsd_weight`` 0 trains on one AugMix view with cross-entropy only.
    """

    severity = Param(3.0, float, low=0, low_open=True, doc="operation strength (see augmix)")
    width = Param(3, int, low=1, doc="augmentation chains mixed per image")
    depth = Param(-1, int, check=lambda v: None if v == -1 or v >= 1 else "must be -1 (random 1-3) or >= 1",
                  doc="operations per chain; -1: 1 to 3 at random")  # fmt: skip
    alpha = Param(1.0, float, low=0, low_open=True, doc="Dirichlet and Beta parameter of the mixing weights")
    jsd_weight = Param(12.0, float, low=0, doc="weight of the Jensen-Shannon consistency term (the paper's lambda)")

    def views(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return augmix(x, g, self.severity, self.width, self.depth, self.alpha)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.jsd_weight == 0:
            return F.cross_entropy(unwrap_logits(model(self.views(x, generator))), y)
        a1, a2 = self.views(x, generator), self.views(x, generator)
        logits = unwrap_logits(model(torch.cat([x, a1, a2])))
        clean, l1, l2 = logits.chunk(3)
        return F.cross_entropy(clean, y) + self.jsd_weight * jsd_loss(clean, l1, l2)
