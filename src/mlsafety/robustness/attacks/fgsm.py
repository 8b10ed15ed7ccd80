"""FGSM: one signed-gradient step (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing
Adversarial Examples", 2015); with ``norm="l2"`` the fast gradient method's normalised step."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier
from mlsafety.robustness.attacks.base import Attack, input_gradient, make_objective, normalize_step, register_attack


@register_attack("fgsm")
class FGSM(Attack):
    """``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)))`` (towards the target when targeted).

    Args:
        eps: step size and radius, in [0, 1] pixel units.
        norm: ``"linf"`` (sign step) or ``"l2"`` (step along the gradient, of length ``eps``).
        targeted: minimise the cross-entropy of a target class instead.
        seed: seed of the generator (only used to draw targets).
        batch_size: inputs attacked together.
    """

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        objective = make_objective("ce", y, target, self.targeted)
        idx = torch.arange(x.shape[0], device=x.device)
        _, _, grad = input_gradient(clf, x, objective, idx)
        return (x + self.eps * normalize_step(grad, self.norm)).clamp(0.0, 1.0)
