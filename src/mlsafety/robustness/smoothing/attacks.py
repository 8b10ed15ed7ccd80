"""Attacks on the smoothed classifier, and the consistency test of certificates against them.

:class:`SmoothedSoftmax` is the smoothed soft classifier as an ``nn.Module`` that any attack of the
registry can attack; :func:`smoothed_pgd_l2` is the Monte-Carlo-gradient PGD-L2 ("SmoothAdv") attack
of Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers",
2019; :func:`attack_certificates` attacks certified inputs inside their radii and re-checks them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import InputError, check_images, randn_like, unwrap_logits
from mlsafety.robustness.smoothing.base import ABSTAIN, Certificate, SmoothedClassifier


class SmoothedSoftmax(nn.Module):
    """The smoothed soft classifier as a module: ``log E_e[softmax(f(x + e))]`` with ``m`` fresh Monte-Carlo
    noise samples per call (expectation over transformation), so gradient attacks on it are the
    "SmoothAdv" attacks of Salman et al., "Provably Robust Deep Learning via Adversarially Trained
    Smoothed Classifiers", 2019.

    Its outputs are log-probabilities (valid logits); the noise comes from ``generator`` on its device.
    """

    def __init__(self, smoothed: SmoothedClassifier, m: int = 32, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = smoothed.classifier.module
        self.denoiser = smoothed.denoiser
        self.smoothed = smoothed
        self.m = m
        self.gen = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rep = x.repeat_interleave(self.m, dim=0)
        noisy = rep + randn_like(rep, self.gen) * self.smoothed.sigma
        if self.denoiser is not None:
            noisy = self.denoiser(noisy)
        probs = unwrap_logits(self.base(noisy)).softmax(dim=1).view(n, self.m, -1).mean(dim=1)
        return probs.clamp_min(1e-12).log()


def smoothed_pgd_l2(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 20,
    m: int = 32,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD in the L2 ball against the smoothed classifier, with Monte-Carlo gradients.

    Maximises the cross-entropy of :class:`SmoothedSoftmax` (``m`` noise samples per step) with
    normalised-gradient steps of ``step_size`` (default ``2.5 * eps / steps``), projected to the
    L2 ball of radius ``eps`` around ``x`` (one radius, or one per input) and to [0, 1].

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``x`` is not modified.
    """
    check_images(x)
    device = smoothed.classifier.device
    x0 = x.detach().to(device)
    y = y.to(device)
    radius = torch.as_tensor(eps, dtype=x0.dtype, device=device).reshape(-1, 1, 1, 1).expand(x0.shape[0], 1, 1, 1)
    alpha = radius * 2.5 / steps if step_size is None else torch.full_like(radius, step_size)
    soft = SmoothedSoftmax(smoothed, m=m, generator=generator)
    x_adv = x0.clone()
    with smoothed._frozen():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.nll_loss(soft(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x_adv = x_adv.detach() + alpha * grad / norm
                delta = x_adv - x0
                dnorm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                delta = delta * torch.clamp(radius / dnorm.clamp_min(1e-12), max=1.0)
                x_adv = (x0 + delta).clamp(0, 1)
    return x_adv.detach().to(x.device, x.dtype)


@dataclass(frozen=True)
class Consistency:
    """Result of attacking certified inputs inside their radii.

    Attributes:
        attacked: (M,) indices (into the certified inputs) that were attacked.
        violated: (M,) bool, the smoothed prediction at the adversarial input is another class (not abstain).
        max_perturbation: (M,) L2 size of each adversarial perturbation.
        attack: the attack's name.
    """

    attacked: torch.Tensor
    violated: torch.Tensor
    max_perturbation: torch.Tensor
    attack: str


def attack_certificates(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    cert: Certificate,
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None,
    name: str = "smoothed-pgd-l2",
    n: int = 1000,
    alpha: float = 0.001,
    shrink: float = 0.999,
    generator: torch.Generator | None = None,
) -> Consistency:
    """Attack every certified input inside its certified radius and re-check the smoothed prediction.

    ``attack(module, x, y, eps) -> x_adv`` attacks one input; it receives :class:`SmoothedSoftmax`
    (so gradient attacks use Monte-Carlo gradients of the smoothed classifier), with the base model
    and the denoiser in eval mode and their parameter gradients off (both restored afterwards). By default the
    built-in :func:`smoothed_pgd_l2`. The adversarial input is judged by :meth:`SmoothedClassifier.predict`
    with ``n`` samples at level ``alpha``: a *violation* is a confident prediction of another class,
    which a correct certificate allows only with probability about ``2 * alpha``.
    """
    idx = (cert.prediction != ABSTAIN).nonzero()[:, 0]
    if idx.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return Consistency(empty, empty.bool(), empty.double(), name)
    device = smoothed.classifier.device
    xs = x[idx.to(x.device)].to(device)
    ys = cert.prediction[idx].to(device)
    radii = cert.radius[idx].to(device, xs.dtype) * shrink
    if attack is None:
        x_adv = smoothed_pgd_l2(smoothed, xs, ys, radii, generator=generator)
    else:
        soft = SmoothedSoftmax(smoothed, generator=generator)
        # the base model and denoiser in eval mode, as certify used them: a caller's attack that does
        # not freeze the module would otherwise run batch norm on the noisy copies and update its
        # running statistics, attacking (and changing) another model than the one certified
        with smoothed._frozen():
            x_adv = torch.cat([attack(soft, xs[i : i + 1], ys[i : i + 1], float(radii[i])) for i in range(len(idx))])
    size = (x_adv - xs).flatten(1).norm(dim=1)
    if bool((size > radii + 1e-4).any()):
        raise InputError(f"attack {name!r} left the L2 ball it was given")
    pred = smoothed.predict(x_adv, n=n, alpha=alpha, generator=generator)
    violated = (pred != ABSTAIN) & (pred != ys)
    return Consistency(idx.cpu(), violated.cpu(), size.double().cpu(), name)


def registry_attack(
    name: str, generator: torch.Generator | None = None, **budget: object
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """An ``attack(module, x, y, eps)`` callable for :func:`attack_certificates` from the attack registry.

    Builds ``mlsafety.robustness.attacks.create(name, eps=eps, norm="l2", **budget)`` for each call;
    budget entries the attack does not take (``steps`` for Square, ``n_queries`` for PGD) are dropped.
    ``generator`` feeds the random starts and proposals of every call in turn (default: each attack's
    own seeded generator).
    """
    from mlsafety.robustness import attacks

    cls = attacks.ATTACKS.get(name)
    if "l2" not in getattr(cls, "norms", ()):
        raise InputError(f"attack {name!r} has no L2 version")
    accepted = set(inspect.signature(cls.__init__).parameters)
    kept = {k: v for k, v in budget.items() if k in accepted}

    def run(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return attacks.create(name, eps=eps, norm="l2", **kept).attack(module, x, y, generator=generator)

    return run
