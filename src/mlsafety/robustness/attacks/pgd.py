"""PGD: projected gradient ascent from a random start (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", 2018), L-inf and L2, with restarts and targeted mode."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.robustness.attacks._objectives import LOSS, SUCCESS, make_objective, make_success
from mlsafety.robustness.attacks.base import (
    EARLY_STOP,
    TARGETED,
    Attack,
    normalize_step,
    project,
    random_start,
    register_attack,
)


@register_attack("pgd", tags=("white-box",))
class PGD(Attack):
    """Projected gradient ascent on a per-sample loss inside the eps-ball, kept in [0, 1].

    Every iterate is checked (its logits come from the forward pass that also gives the gradient,
    so checking is free): each point returns its first successful iterate, or else the iterate with
    the highest loss over all steps and restarts (the per-sample worst case). Restarts only run on
    points not yet broken. The loss and success hooks are described in
    :mod:`mlsafety.robustness.attacks._objectives`; with ``early_stop=False`` PGD keeps maximising the loss
    of points already broken.
    """

    steps = Param(10, int, low=0, doc="gradient steps per restart")
    step_size = Param(None, float, low=0, low_open=True, doc="step length; None: 2.5 * eps / steps (Madry et al.)")
    random_start = Param(True, bool, doc="start from a uniform random point of the ball (else from x)")
    restarts = Param(1, int, low=1, doc="independent runs; each point keeps its worst case")
    targeted = TARGETED
    loss = LOSS
    success = SUCCESS
    early_stop = EARLY_STOP

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        objective = make_objective(self.loss, y, target, self.targeted)
        succeeded = make_success(self.success, y, target, self.targeted)
        step_size = 2.5 * self.eps / max(self.steps, 1) if self.step_size is None else self.step_size
        n = x.shape[0]
        view = (-1,) + (1,) * (x.ndim - 1)
        best_x = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~done).nonzero()[:, 0] if self.early_stop else torch.arange(n, device=x.device)
            if idx.numel() == 0:
                break
            x0 = x[idx]
            xa = random_start(x0, self.eps, self.norm, g) if self.random_start else x0.clone()
            for step in range(self.steps + 1):
                last = step == self.steps
                xa.requires_grad_(not last)
                with torch.set_grad_enabled(not last):
                    logits = clf.logits(xa)
                    loss = objective(logits, xa, idx)
                grad = None if last else torch.autograd.grad(loss.sum(), xa)[0]
                xa = xa.detach()
                with torch.no_grad():
                    loss = loss.detach()
                    hit = succeeded(logits.detach(), xa, idx)
                    everyone = idx.numel() == n  # then idx is arange(n): no gathers or scatters needed
                    old_done = done if everyone else done[idx]
                    old_loss = best_loss if everyone else best_loss[idx]
                    better = (hit & ~old_done) | ((hit == old_done) & (loss > old_loss))
                    if everyone:
                        best_x = torch.where(better.reshape(view), xa, best_x)
                        best_loss = torch.where(better, loss, best_loss)
                        done = done | hit
                    else:
                        sel = idx[better]
                        best_x[sel] = xa[better]
                        best_loss[sel] = loss[better]
                        done[idx[hit]] = True
                    if grad is None:
                        break
                    if self.early_stop and bool(hit.any()):
                        keep = ~hit
                        idx, xa, x0, grad = idx[keep], xa[keep], x0[keep], grad[keep]
                        if idx.numel() == 0:
                            break
                    xa = project(xa + step_size * normalize_step(grad, self.norm), x0, self.eps, self.norm)
        return best_x
