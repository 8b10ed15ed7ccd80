"""APGD: Auto-PGD with its step-size schedule, checkpoints and momentum (Croce & Hein, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks", 2020).

:func:`apgd_run` is the shared core: APGD-CE, APGD-DLR and APGD-T (``apgd_t.py``) call it with
different objectives, and it accepts any per-sample objective, so adaptive attacks can reuse it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mlsafety.core import Classifier, Param, rand_like, randn_like
from mlsafety.robustness.attacks._objectives import (
    LOSS,
    SUCCESS,
    Objective,
    input_gradient,
    make_objective,
    make_success,
)
from mlsafety.robustness.attacks.base import (
    EARLY_STOP,
    TARGETED,
    Attack,
    lp_norm,
    normalize_step,
    project,
    register_attack,
)

ALPHA = 0.75
"""Momentum weight of the APGD update (the paper's alpha)."""

RHO = Param(
    0.75, float, low=0, high=1, doc="checkpoint test: share of steps that must raise the loss (the paper's rho)"
)


def _start(x: torch.Tensor, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    # As in the reference code: a random direction scaled to the sphere of radius eps.
    t = 2 * rand_like(x, g) - 1 if norm == "linf" else randn_like(x, g)
    t = t / (lp_norm(t, norm).reshape(-1, 1, 1, 1) + 1e-12)
    return (x + eps * t).clamp(0.0, 1.0)


def _checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """First checkpoint interval, its minimum and its decrease (p_1 = 0.22, 0.06 and 0.03 of steps)."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def apgd_run(
    clf: Classifier,
    x: torch.Tensor,
    idx: torch.Tensor,
    objective: Objective,
    succeeded: Objective,
    eps: float,
    norm: str,
    steps: int,
    g: torch.Generator,
    rho: float = 0.75,
    early_stop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run on the points ``x`` (positions ``idx`` of the batch the objectives index).

    The step size starts at ``2 * eps``; at each checkpoint a point whose loss rose in at most a
    share ``rho`` of the steps since the last checkpoint, or whose step size was kept last time
    while its best loss did not improve, has its step size halved and restarts from its best
    point. Every point's state is independent, so with ``early_stop`` broken points leave the batch
    without changing the others' trajectories.

    Returns:
        ``(x_out, hit, best_loss)``: ``x_out`` is each point's first successful iterate, or its
        highest-loss iterate when none succeeded; ``hit`` says which succeeded.
    """
    n = x.shape[0]
    xa = _start(x, eps, norm, g)
    x_out = xa.clone()
    hit_all = torch.zeros(n, dtype=torch.bool, device=x.device)
    pos = torch.arange(n, device=x.device)

    logits, loss, grad = input_gradient(clf, xa, objective, idx)
    loss_out = torch.full_like(loss, float("-inf"))  # the objective's dtype (float64 for a float64 model)
    hit = succeeded(logits, xa, idx)
    state = {
        "x": x,
        "xa": xa,
        "x_prev": xa.clone(),
        "grad": grad,
        "x_best": xa.clone(),
        "grad_best": grad.clone(),
        "loss_best": loss.clone(),
        "loss_last_check": loss.clone(),
        "loss_prev": loss.clone(),
        "step": torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype),
        "reduced_last": torch.ones(n, dtype=torch.bool, device=x.device),
        "n_incr": torch.zeros(n, device=x.device),
        "pos": pos,
    }

    def record(hit: torch.Tensor) -> None:
        p = state["pos"][hit]
        fresh = ~hit_all[p]
        x_out[p[fresh]] = state["xa"][hit][fresh]
        hit_all[p] = True

    def drop(keep: torch.Tensor) -> None:
        gone = ~keep
        loss_out[state["pos"][gone]] = state["loss_best"][gone]
        for key, value in state.items():
            state[key] = value[keep]

    record(hit)
    if early_stop:
        drop(~hit)
    k, k_min, k_decr = _checkpoint_lengths(steps)
    since_check = 0
    for i in range(steps):
        if state["pos"].numel() == 0:
            break
        with torch.no_grad():
            s = state
            xa, x0 = s["xa"], s["x"]
            step = s["step"].reshape(-1, 1, 1, 1)
            momentum = xa - s["x_prev"]
            s["x_prev"] = xa
            a = ALPHA if i > 0 else 1.0
            z = project(xa + step * normalize_step(s["grad"], norm), x0, eps, norm)
            s["xa"] = project(xa + a * (z - xa) + (1 - a) * momentum, x0, eps, norm)
        logits, loss, grad = input_gradient(clf, s["xa"], objective, idx[s["pos"]])
        with torch.no_grad():
            s["grad"] = grad
            hit = succeeded(logits, s["xa"], idx[s["pos"]])
            record(hit)
            s["n_incr"] += (loss > s["loss_prev"]).to(s["n_incr"].dtype)
            s["loss_prev"] = loss
            improved = loss > s["loss_best"]
            s["x_best"][improved] = s["xa"][improved]
            s["grad_best"][improved] = grad[improved]
            s["loss_best"][improved] = loss[improved]
            since_check += 1
            if since_check == k:
                oscillating = s["n_incr"] <= k * rho
                stalled = ~s["reduced_last"] & (s["loss_last_check"] >= s["loss_best"])
                reduce = oscillating | stalled
                s["reduced_last"] = reduce
                s["loss_last_check"] = s["loss_best"].clone()
                s["step"][reduce] /= 2.0
                s["xa"][reduce] = s["x_best"][reduce]
                s["grad"][reduce] = s["grad_best"][reduce]
                s["n_incr"].zero_()
                k = max(k - k_decr, k_min)
                since_check = 0
            if early_stop and bool(hit.any()):
                drop(~hit)
    p = state["pos"]
    loss_out[p] = state["loss_best"]
    unbroken = ~hit_all[p]
    x_out[p[unbroken]] = state["x_best"][unbroken]
    return x_out, hit_all, loss_out


@register_attack("apgd-ce", tags=("white-box",))
class APGD(Attack):
    """APGD on the cross-entropy (``apgd-ce``); the loss and success hooks make it a general core."""

    steps = Param(100, int, low=1, doc="iterations per restart (AutoAttack uses 100)")
    restarts = Param(1, int, low=1, doc="runs from new random starts on the points not yet broken")
    loss = LOSS
    success = SUCCESS
    rho = RHO
    targeted = TARGETED
    early_stop = EARLY_STOP

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss is None:  # None: this attack's own loss (as the signature's default says)
            self.loss = self.param_specs()["loss"].default

    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        objective = make_objective(self.loss, y, target, self.targeted)
        succeeded = make_success(self.success, y, target, self.targeted)
        return run_restarts(self, clf, x, objective, succeeded, g)[0]


def run_restarts(
    attack: Attack,
    clf: Classifier,
    x: torch.Tensor,
    objective: Objective,
    succeeded: Objective,
    g: torch.Generator,
    done: torch.Tensor | None = None,
    x_adv: torch.Tensor | None = None,
    best_loss: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run APGD ``attack.restarts`` times on the points not yet ``done``, keeping each point's worst case."""
    n = x.shape[0]
    done = torch.zeros(n, dtype=torch.bool, device=x.device) if done is None else done.clone()
    x_adv = x.clone() if x_adv is None else x_adv.clone()
    best_loss = (
        torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype) if best_loss is None else best_loss.clone()
    )
    steps, rho, early = getattr(attack, "steps", 100), getattr(attack, "rho", 0.75), getattr(attack, "early_stop", True)
    for _ in range(getattr(attack, "restarts", 1)):
        idx = (~done).nonzero()[:, 0]
        if idx.numel() == 0:
            break
        out, hit, loss = apgd_run(clf, x[idx], idx, objective, succeeded, attack.eps, attack.norm, steps, g, rho, early)
        better = hit | (loss > best_loss[idx])
        x_adv[idx[better]] = out[better]
        best_loss[idx[better]] = loss[better].to(best_loss.dtype)
        done[idx[hit]] = True
    return x_adv, done, best_loss


@register_attack("apgd-dlr", tags=("white-box",))
class APGDDLR(APGD):
    """APGD on the Difference of Logits Ratio loss (``apgd-dlr``), robust to logit rescaling.

    Same parameters as :class:`APGD`; the loss defaults to ``"dlr"`` (needs at least three classes,
    four when targeted).
    """

    loss = replace(LOSS, default="dlr")
