"""Shared machinery of the attack family: the :class:`Attack` base class, the registry and helpers.

Threat model: an attacker who may move each input within an ``eps``-ball (L-inf or L2, in [0, 1]
pixel units) and must stay inside the image box [0, 1]. White-box attacks take gradients of the
model with respect to the input only; black-box ones (Square) only read the logits.

A subclass writes :meth:`Attack.perturb` on one batch that is already on the model's device, with
the model wrapped in :func:`mlsafety.core.frozen` (eval mode, parameter gradients off). The base
class does the chores: wrapping the model, checking inputs and labels, batching, device and dtype,
drawing targets, the seeded generator, the final projection and restoring the model, also when the
attack raises.

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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import (
    Classifier,
    InputError,
    Registry,
    as_classifier,
    check_images,
    check_labels,
    frozen,
    generator,
    rand_like,
    randn_like,
)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits (N, K), y (N,), x (N, C, H, W)) -> loss (N,)``: a per-sample loss the attack maximises."""

SuccessFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits (N, K), y (N,), x (N, C, H, W)) -> bool (N,)``: which points count as adversarial."""

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Internal form of a loss or success test: ``(logits, x_active, idx) -> (n_active,)``; ``idx``
indexes the active points within the batch, so attacks may drop finished points."""

NORMS = ("linf", "l2")


@dataclass
class AttackOutput:
    """What :meth:`Attack.run` returns.

    Attributes:
        x_adv: adversarial inputs, same shape, dtype and device as the inputs.
        warnings: sanity flags raised while attacking (e.g. ``square_beats_white_box``), each a
            lower-case name with underscores, mapped to a one-line explanation.
        broken_by: for ensembles, how many points each member broke first.
    """

    x_adv: torch.Tensor
    warnings: dict[str, str] = field(default_factory=dict)
    broken_by: dict[str, int] = field(default_factory=dict)


class Attack:
    """Base class of attacks: the constructor stores hyper-parameters, ``attack(model, x, y)`` runs.

    Args:
        eps: radius of the threat model in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        targeted: move each input towards a target class (``target=`` in the call, or a random
            class other than the label drawn from the attack's generator) instead of away from its
            label.
        seed: seed of the attack's generator (random starts, targets, Square's proposals).
        batch_size: inputs attacked together.

    Example:
        >>> x_adv = PGD(eps=0.1)(model, x, y)
    """

    name: ClassVar[str]
    supports_targeted: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(
        self, eps: float, norm: str = "linf", targeted: bool = False, seed: int = 0, batch_size: int = 512
    ) -> None:
        if not isinstance(eps, (int, float)) or not 0.0 <= float(eps) <= (1.0 if norm == "linf" else math.inf):
            raise InputError(f"eps must be a number in [0, 1] pixel units for L-inf (>= 0 for L2), got {eps!r}")
        if norm not in self.norms:
            raise InputError(f"{type(self).__name__} supports norm {' or '.join(self.norms)}, not {norm!r}")
        if targeted and not self.supports_targeted:
            raise InputError(f"{type(self).__name__} chooses its own targets; leave targeted=False")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.eps = float(eps)
        self.norm = norm
        self.targeted = bool(targeted)
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    # -- the algorithm -------------------------------------------------------------------------
    def perturb(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        """Adversarial version of one batch ``x`` (on the model's device, model frozen in eval mode).

        ``target`` is given exactly when ``self.targeted``. Must not modify ``x`` in place.
        """
        raise NotImplementedError

    def perturb_report(
        self, clf: Classifier, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, g: torch.Generator
    ) -> AttackOutput:
        """Like :meth:`perturb` but with sanity flags; ensembles override it."""
        return AttackOutput(self.perturb(clf, x, y, target, g))

    # -- the chores ----------------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module | Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Adversarial inputs for ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,).

        Args:
            model: any classifier module (or :class:`~mlsafety.core.Classifier`).
            x: inputs in [0, 1]; never modified.
            y: true labels.
            target: target labels for a targeted attack (default: random other classes).
            generator: overrides the attack's own seeded generator (e.g. one per training batch).

        Returns:
            ``x_adv`` with the shape, dtype and device of ``x``, inside the eps-ball and [0, 1].
        """
        return self.run(model, x, y, target=target, generator=generator).x_adv

    attack = __call__

    def run(
        self,
        model: nn.Module | Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackOutput:
        """Like calling the attack, but also returns its sanity flags (see :class:`AttackOutput`)."""
        clf = as_classifier(model)
        check_images(x)
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise InputError(f"labels must be a tensor of shape ({x.shape[0]},), one per input")
        device = clf.device
        dtype = _param_dtype(clf.module, x.dtype)
        x0 = x.detach().to(device=device, dtype=dtype)
        y0 = y.detach().to(device).long()
        g = generator if generator is not None else self.generator()
        with frozen(clf.module), torch.enable_grad():
            k = _num_classes(clf, x0[:1])
            check_labels(y0, k)
            if self.targeted:
                target = self._targets(y0, k, g) if target is None else check_labels(target.to(device).long(), k)
                if target.shape != y0.shape:
                    raise InputError("target must hold one class per input")
            elif target is not None:
                raise InputError("target= is only used by a targeted attack; create it with targeted=True")
            parts: list[torch.Tensor] = []
            warnings: dict[str, str] = {}
            broken: dict[str, int] = {}
            for start in range(0, x0.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                out = self.perturb_report(clf, x0[sl], y0[sl], None if target is None else target[sl], g)
                parts.append(out.x_adv.detach())
                warnings.update(out.warnings)
                for key, count in out.broken_by.items():
                    broken[key] = broken.get(key, 0) + count
        x_adv = project(torch.cat(parts), x0, self.eps, self.norm)
        return AttackOutput(x_adv.to(device=x.device, dtype=x.dtype), warnings, broken)

    def generator(self) -> torch.Generator:
        """The attack's own generator, derived from ``seed`` and its registry name."""
        return generator(self.seed, "attack", getattr(self, "name", type(self).__name__))

    @staticmethod
    def _targets(y: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        if k < 2:
            raise InputError("a targeted attack needs a model with at least two classes")
        shift = torch.randint(1, k, y.shape, generator=g).to(y.device)
        return (y + shift) % k

    def hyper_parameters(self) -> dict[str, Any]:
        """The constructor's arguments as stored (for result rows and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not callable(v)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items())
        return f"{type(self).__name__}({args})"


def _param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def _num_classes(clf: Classifier, x: torch.Tensor) -> int:
    try:
        return clf.num_classes
    except InputError:
        with torch.no_grad():
            return int(clf.logits(x).shape[1])


# -- the registry ------------------------------------------------------------------------------
ATTACKS: Registry[Attack] = Registry("attack")
register_attack = ATTACKS.register


def create(name: str, **params: Any) -> Attack:
    """The attack registered as ``name`` with hyper-parameters ``params``, e.g. ``create("pgd", eps=0.1)``."""
    return ATTACKS.create(name, **params)


def available() -> list[str]:
    """Registered attack names, sorted."""
    return ATTACKS.available()


# -- geometry ----------------------------------------------------------------------------------
def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm ``(N,)`` of a batch of perturbations."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``eps``-ball around ``x`` and then onto the box [0, 1].

    For L-inf this is the exact projection onto the intersection; for L2 clipping to the box after
    the ball only shrinks each coordinate of the perturbation, so the result stays in both sets.
    """
    delta = x_adv - x
    if norm == "linf":
        if isinstance(eps, torch.Tensor):
            e = _view(eps, x)
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        norms = _view(lp_norm(delta, "l2"), x)
        radius = _view(eps, x) if isinstance(eps, torch.Tensor) else torch.as_tensor(eps, dtype=x.dtype)
        delta = delta * torch.clamp(radius / (norms + 1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def normalize_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: ``sign(grad)`` for L-inf, ``grad / ||grad||`` for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / (_view(lp_norm(grad, "l2"), grad) + 1e-12)


def random_start(x: torch.Tensor, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    """A uniform random point of the eps-ball around ``x`` (clipped to [0, 1])."""
    if norm == "linf":
        delta = (2 * rand_like(x, g) - 1) * eps
    else:
        direction = normalize_step(randn_like(x, g), "l2")
        d = x[0].numel()
        radius = rand_like(x[:, :1, :1, :1], g) ** (1.0 / d) * eps
        delta = direction * radius
    return (x + delta).clamp(0.0, 1.0)


# -- losses ------------------------------------------------------------------------------------
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
