"""FGSM: one signed-gradient step (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing
Adversarial Examples", 2015); with ``norm="l2"`` the fast gradient method's normalised step."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier
from mlsafety.robustness.attacks._objectives import input_gradient, make_objective
from mlsafety.robustness.attacks.base import TARGETED, Attack, normalize_step, register_attack


@register_attack("fgsm", tags=("white-box",))
class FGSM(Attack):
    """``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)))`` (towards the target when targeted).

    ``eps`` is both the step and the radius; with ``norm="l2"`` the step follows the gradient with
    length ``eps``. In targeted mode it lowers the cross-entropy of the target class instead. The
    generator is only used to draw targets.
    """

    targeted = TARGETED

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        objective = make_objective("ce", y, target, self.targeted)
        idx = torch.arange(x.shape[0], device=x.device)
        _, _, grad = input_gradient(clf, x, objective, idx)
        return (x + self.eps * normalize_step(grad, self.norm)).clamp(0.0, 1.0)
