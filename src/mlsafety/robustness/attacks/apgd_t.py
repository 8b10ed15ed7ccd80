"""APGD-T: APGD on the targeted DLR loss, run in turn towards each of the top-k other classes
(Croce & Hein 2020, the targeted member of AutoAttack's standard ensemble)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier
from mlsafety.robustness.attacks._objectives import dlr_targeted_loss, make_success
from mlsafety.robustness.attacks.apgd import RHO, run_restarts
from mlsafety.robustness.attacks.base import EARLY_STOP, TargetSweep, register_attack


@register_attack("apgd-t", tags=("white-box",))
class APGDT(TargetSweep):
    """Targeted-DLR APGD over the ``n_target_classes`` classes with the highest clean logits.

    Each target runs APGD (``restarts`` times) on the points the earlier targets did not break.
    """

    rho = RHO
    early_stop = EARLY_STOP
    min_classes = 4  # the targeted DLR loss needs four classes

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        targets = self.target_classes(clf, x)
        succeeded = make_success(None, y, None, False)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_adv, best = x.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        for tgt in targets:

            def objective(logits: torch.Tensor, xa: torch.Tensor, idx: torch.Tensor, tgt: torch.Tensor = tgt):
                return dlr_targeted_loss(logits, y[idx], tgt[idx])

            x_adv, done, best = run_restarts(self, clf, x, objective, succeeded, g, done, x_adv, best)
            if bool(done.all()):
                break
        return x_adv
