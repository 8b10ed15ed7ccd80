"""APGD-T: APGD on the targeted DLR loss, run in turn towards each of the top-k other classes
(Croce & Hein 2020, the targeted member of AutoAttack's standard ensemble)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError
from mlsafety.robustness.attacks.apgd import run_restarts
from mlsafety.robustness.attacks.base import Attack, dlr_targeted_loss, make_success, register_attack


@register_attack("apgd-t")
class APGDT(Attack):
    """Targeted-DLR APGD over the ``n_target_classes`` classes with the highest clean logits.

    An untargeted attack in effect: a point counts as broken when it is misclassified, whichever
    target produced it. Each target runs only on the points the earlier targets did not break.

    Args:
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: APGD iterations per target (AutoAttack uses 100).
        n_target_classes: how many of the most likely other classes to try (AutoAttack uses 9);
            capped at the number of classes minus one.
        restarts: APGD restarts per target.
        rho: APGD's checkpoint threshold.
        early_stop: drop broken points from the batch (does not change the result).
        seed: seed of the random starts.
        batch_size: inputs attacked together.
    """

    supports_targeted = False

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        early_stop: bool = True,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps, norm=norm, seed=seed, batch_size=batch_size)
        if int(steps) < 1 or int(n_target_classes) < 1 or int(restarts) < 1:
            raise InputError("APGD-T needs steps, n_target_classes and restarts of at least 1")
        self.steps = int(steps)
        self.n_target_classes = int(n_target_classes)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.early_stop = bool(early_stop)

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        with torch.no_grad():
            order = clf.logits(x).argsort(dim=1)
        k = order.shape[1]
        if k < 4:
            raise InputError("APGD-T uses the targeted DLR loss, which needs at least four classes")
        succeeded = make_success(None, y, None, False)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_adv, best = x.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device)
        for rank in range(2, min(self.n_target_classes, k - 1) + 2):
            tgt = order[:, -rank]

            def objective(logits: torch.Tensor, xa: torch.Tensor, idx: torch.Tensor, tgt: torch.Tensor = tgt):
                return dlr_targeted_loss(logits, y[idx], tgt[idx])

            x_adv, done, best = run_restarts(self, clf, x, objective, succeeded, g, done, x_adv, best)
            if bool(done.all()):
                break
        return x_adv
