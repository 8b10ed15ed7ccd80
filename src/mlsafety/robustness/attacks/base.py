"""Shared machinery of the attack family: the :class:`Attack` base class, the registry and helpers.

Threat model: an attacker who may move each input within an ``eps``-ball (L-inf or L2, in [0, 1]
pixel units) and must stay inside the image box [0, 1]. White-box attacks take gradients of the
model with respect to the input only; black-box ones (Square) only read the logits.

A subclass writes :meth:`Attack.perturb` on one batch that is already on the model's device, with
the model wrapped in :func:`mlsafety.core.frozen` (eval mode, parameter gradients off). The base
class does the chores: wrapping the model, checking inputs and labels, batching, device and dtype,
drawing targets, the seeded generator, the final projection and restoring the model, also when the
attack raises.

The losses, the loss and success hooks and the input gradient live in :mod:`._objectives`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mlsafety.core import (
    Classifier,
    HyperParams,
    InputError,
    ModelLike,
    Param,
    Registry,
    as_classifier,
    check_images,
    check_labels,
    frozen,
    generator,
    rand_like,
    randn_like,
)

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


# Parameters several attacks share, declared once; an attack lists the ones it takes, in its order
# (LOSS and SUCCESS, the hooks, are declared in _objectives).
TARGETED = Param(
    False, bool, doc="move each input towards a target class (target= in the call, else a random other class)"
)
EARLY_STOP = Param(True, bool, doc="stop working on a point once adversarial (the robust accuracy is the same)")
TAIL = ("seed", "batch_size")
"""Base parameters that close every attack's signature (after the attack's own)."""


class Attack(HyperParams):
    """Base class of attacks: the constructor stores hyper-parameters, ``attack(model, x, y)`` runs.

    Every attack takes ``eps``, ``norm``, ``seed`` and ``batch_size`` (declared here; ``seed`` and
    ``batch_size`` close the signature); one that supports targeted mode declares ``targeted =
    TARGETED`` (and gets ``supports_targeted``). ``describe_params()`` lists them with their docs.

    Example:
        >>> x_adv = PGD(eps=0.1)(model, x, y)
    """

    eps = Param(cast=float, low=0, doc="radius of the threat model in [0, 1] pixel units (at most 1 for L-inf)")
    norm = Param("linf", str, choices=NORMS, doc="the threat model's norm, 'linf' or 'l2'")
    seed = Param(0, int, doc="seed of the attack's own generator (random starts, targets, proposals)")
    batch_size = Param(512, int, low=1, store=False, doc="inputs attacked together")

    name: ClassVar[str]
    supports_targeted: ClassVar[bool] = False
    norms: ClassVar[tuple[str, ...]] = NORMS
    min_classes: ClassVar[int] = 1
    """Classes the model needs for this attack's loss (an ensemble skips the attack below it)."""
    targeted = False
    """An attack without the ``targeted`` parameter is untargeted (or picks its own targets)."""

    param_tail = TAIL

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_targeted = "targeted" in cls._params

    def __post_init__(self) -> None:
        """Checks across parameters (a subclass that adds its own calls ``super().__post_init__()``)."""
        who = getattr(self, "name", type(self).__name__)
        if self.norm not in self.norms:
            raise InputError(f"{who} norm must be one of {', '.join(map(repr, self.norms))}, got {self.norm!r}")
        if self.norm == "linf" and self.eps > 1:
            raise InputError(f"{who} eps must be <= 1 for norm 'linf' (pixel units in [0, 1]), got {self.eps!r}")

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
        model: ModelLike,
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
        model: ModelLike,
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
        shift = torch.randint(1, k, y.shape, generator=g, device=g.device).to(y.device)  # g may be a GPU's
        return (y + shift) % k


class TargetSweep(Attack):
    """Base of attacks run in turn towards each of the most likely other classes (APGD-T, FAB-T).

    Untargeted in effect: a point counts as broken when it is misclassified, whichever target
    produced it; each target runs only on the points the earlier ones did not break.
    """

    steps = Param(100, int, low=1, doc="iterations per target and restart (AutoAttack uses 100)")
    n_target_classes = Param(9, int, low=1, doc="most likely other classes to try (AutoAttack uses 9); at most K - 1")
    restarts = Param(1, int, low=1, doc="runs per target")

    def target_classes(self, clf: Classifier, x: torch.Tensor) -> list[torch.Tensor]:
        """The targets (N,) of ``x``, one tensor per turn: the runner-up clean class first, then the next."""
        with torch.no_grad():
            order = clf.logits(x).argsort(dim=1)
        k = order.shape[1]
        if k < self.min_classes:
            raise InputError(f"{self.name} needs a model with at least {self.min_classes} classes, got {k}")
        return [order[:, -rank] for rank in range(2, min(self.n_target_classes, k - 1) + 2)]


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
