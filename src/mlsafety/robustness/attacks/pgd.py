"""PGD: projected gradient ascent from a random start (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", 2018), L-inf and L2, with restarts and targeted mode."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError
from mlsafety.robustness.attacks.base import (
    Attack,
    LossFn,
    SuccessFn,
    make_objective,
    make_success,
    normalize_step,
    project,
    random_start,
    register_attack,
)


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient ascent on a per-sample loss inside the eps-ball, kept in [0, 1].

    Every iterate is checked (its logits come from the forward pass that also gives the gradient,
    so checking is free): each point returns its first successful iterate, or else the iterate with
    the highest loss over all steps and restarts (the per-sample worst case). Restarts only run on
    points not yet broken.

    Args:
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart.
        step_size: step length; None means ``2.5 * eps / steps`` (Madry et al.'s rule).
        random_start: start from a uniform random point of the ball (else from ``x``).
        restarts: independent runs; each point keeps its worst case.
        targeted: push towards a target class (see :class:`~mlsafety.robustness.attacks.Attack`).
        loss: ``"ce"``, ``"dlr"`` or a hook ``(logits, y, x) -> (N,)`` to maximise (module docs of
            :mod:`mlsafety.robustness.attacks.base`).
        success: hook ``(logits, y, x) -> bool (N,)``; None means misclassified (or on target).
        early_stop: stop working on a point once it is successful (saves time; the robust
            accuracy is the same as checking every iterate). Turn off to keep maximising the loss.
        seed: seed of the random starts and targets.
        batch_size: inputs attacked together.
    """

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        targeted: bool = False,
        loss: str | LossFn = "ce",
        success: SuccessFn | None = None,
        early_stop: bool = True,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        super().__init__(eps, norm=norm, targeted=targeted, seed=seed, batch_size=batch_size)
        if int(steps) < 0 or int(restarts) < 1:
            raise InputError("PGD needs steps >= 0 and restarts >= 1")
        self.steps = int(steps)
        self.step_size = 2.5 * self.eps / max(self.steps, 1) if step_size is None else float(step_size)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.loss = loss
        self.success = success
        self.early_stop = bool(early_stop)

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        objective = make_objective(self.loss, y, target, self.targeted)
        succeeded = make_success(self.success, y, target, self.targeted)
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
                    xa = project(xa + self.step_size * normalize_step(grad, self.norm), x0, self.eps, self.norm)
        return best_x
