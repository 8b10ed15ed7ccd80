"""What the attacks maximise: per-sample losses, the loss and success hooks, the input gradient.

Loss hooks
    :class:`~mlsafety.robustness.attacks.PGD` and the APGD attacks accept ``loss=`` a callable
    ``(logits, y, x) -> per-sample loss (N,)`` that the attack *maximises* (``x`` is the current
    adversarial batch, with gradients enabled, so the loss may run other modules on it, e.g. a
    detector), and ``success=`` a callable ``(logits, y, x) -> bool (N,)`` saying which points are
    already adversarial (the attack keeps the first successful iterate of each point and, with
    ``early_stop``, stops working on it). In targeted mode both receive the target labels as ``y``.
    An adaptive attack on a model plus a monitor is written with these two hooks alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, InputError, Param

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits (N, K), y (N,), x (N, C, H, W)) -> loss (N,)``: a per-sample loss the attack maximises."""

SuccessFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits (N, K), y (N,), x (N, C, H, W)) -> bool (N,)``: which points count as adversarial."""

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Internal form of a loss or success test: ``(logits, x_active, idx) -> (n_active,)``; ``idx``
indexes the active points within the batch, so attacks may drop finished points."""


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``.

    Invariant to shifting and scaling the logits; needs at least three classes.
    """
    if logits.shape[1] < 3:
        raise InputError("the DLR loss needs at least three classes; use loss='ce'")
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    top_is_y = logits.argmax(dim=1) == y
    z_other = torch.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs at least four classes."""
    if logits.shape[1] < 4:
        raise InputError("the targeted DLR loss needs at least four classes")
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i!=y} z_i``: positive while ``y`` wins (the class of ``y`` keeps the lead)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return z_y - other


BUILTIN_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"ce": ce_loss, "dlr": dlr_loss}


def make_objective(loss: str | LossFn, y: torch.Tensor, target: torch.Tensor | None, targeted: bool) -> Objective:
    """The per-sample quantity an attack maximises, from a built-in name or a user's loss hook."""
    if callable(loss):
        labels = target if targeted and target is not None else y

        def user(logits: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return loss(logits, labels[idx], x)

        return user
    if loss not in BUILTIN_LOSSES:
        raise InputError(f"unknown loss {loss!r}; use one of {', '.join(BUILTIN_LOSSES)} or a callable")
    if not targeted or target is None:
        fn = BUILTIN_LOSSES[loss]
        return lambda logits, x, idx: fn(logits, y[idx])
    if loss == "dlr":
        return lambda logits, x, idx: dlr_targeted_loss(logits, y[idx], target[idx])
    fn = BUILTIN_LOSSES[loss]
    return lambda logits, x, idx: -fn(logits, target[idx])


def make_success(success: SuccessFn | None, y: torch.Tensor, target: torch.Tensor | None, targeted: bool) -> Objective:
    """Which points are adversarial: misclassified (or on target), or the user's success hook."""
    labels = target if targeted and target is not None else y
    if success is not None:
        return lambda logits, x, idx: success(logits, labels[idx], x).bool()
    if targeted and target is not None:
        return lambda logits, x, idx: logits.argmax(dim=1) == labels[idx]
    return lambda logits, x, idx: logits.argmax(dim=1) != labels[idx]


def input_gradient(
    clf: Classifier, x: torch.Tensor, objective: Objective, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, loss, grad)`` of the summed objective at ``x`` with respect to ``x`` only; no graph kept."""
    xg = x.detach().requires_grad_(True)
    logits = clf.logits(xg)
    loss = objective(logits, xg, idx)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    return logits.detach(), loss.detach(), grad.detach()


def _loss_problem(value: object) -> str | None:
    if callable(value) or value in BUILTIN_LOSSES:
        return None
    return f"must be {' or '.join(map(repr, BUILTIN_LOSSES))} or a callable (logits, y, x) -> loss (N,)"


def _hook_problem(value: object) -> str | None:
    return None if value is None or callable(value) else "must be a callable (logits, y, x) -> bool (N,) or None"


LOSS = Param("ce", check=_loss_problem, doc="'ce', 'dlr' or a hook (logits, y, x) -> (N,) to maximise")
SUCCESS = Param(None, check=_hook_problem, doc="hook (logits, y, x) -> bool (N,); None: misclassified (or on target)")
