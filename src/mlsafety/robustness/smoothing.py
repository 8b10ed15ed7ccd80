"""Randomized smoothing: certified L2 robustness (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is robust
around ``x``: if the top class has probability ``pA >= 1/2`` then ``g`` is constant on the L2 ball
of radius ``sigma * Phi^-1(pA)``. :class:`SmoothedClassifier` implements the paper's ``PREDICT``
(abstain unless a two-sided binomial test separates the top two classes) and ``CERTIFY`` (a
one-sided Clopper-Pearson lower bound on ``pA``), plus:

* a sequential ``CERTIFY`` (:meth:`SmoothedClassifier.certify_sequential`) that draws samples in
  batches and stops as soon as a time-uniform confidence sequence (the beta-binomial mixture
  martingale of Robbins 1970, see Howard et al., "Time-uniform, nonparametric, nonasymptotic
  confidence sequences", 2021) decides whether ``pA`` clears the target radius. Because the bound
  holds at every sample size at once, stopping early keeps the error rate at ``alpha``; naive
  repeated Clopper-Pearson tests would not.
* denoised smoothing (Salman et al., "Denoised Smoothing", 2020; Carlini et al., "(Certified!!)
  Adversarial Robustness for Free!", 2023): ``denoiser=`` maps noisy inputs to clean ones before the
  base classifier, so an off-the-shelf classifier (or a diffusion model's one-shot denoise) can be
  smoothed without retraining.
* the Gaussian-noise training recipe for base models (:func:`train_noisy_classifier`).
* a Monte-Carlo-gradient PGD-L2 attack on the smoothed classifier (:func:`smoothed_pgd_l2`, the
  "SmoothAdv" attack of Salman et al. 2019) and :class:`SmoothedSoftmax`, an ``nn.Module`` view of
  the smoothed soft classifier that any attack of the registry can attack.

Noise is drawn on the generator's device (CPU by default) in batches of ``batch_size`` and moved
to the model's device, so results are reproducible across devices and at most ``batch_size``
noisy copies are ever in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from mlsafety.core import (
    Classifier,
    DataLike,
    InputError,
    as_array_dataset,
    as_classifier,
    check_images,
    frozen,
    generator,
    randn_like,
)

ABSTAIN = -1
"""The prediction returned when the smoothed classifier abstains."""


@dataclass(frozen=True)
class Certificate:
    """Certification results for N inputs.

    Attributes:
        prediction: (N,) int64 predicted class, :data:`ABSTAIN` (-1) when not certified.
        radius: (N,) float64 certified L2 radius (0 where abstaining).
        p_lower: (N,) float64 lower confidence bound on the top class's probability.
        samples: (N,) int64 noise samples used for the estimate (selection samples ``n0`` excluded).
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    samples: torch.Tensor

    def certified_accuracy(self, labels: torch.Tensor, radius: float) -> torch.Tensor:
        """Boolean (N,): correct and certified at L2 ``radius`` or more."""
        labels = labels.to(self.prediction.device)
        return (self.prediction == labels) & (self.radius >= radius) & (self.prediction != ABSTAIN)


class SmoothedClassifier:
    """A Gaussian-smoothed classifier ``g`` built on a base classifier ``f``.

    Args:
        model: the base classifier (inputs in [0, 1] to logits), an ``nn.Module`` or ``Classifier``.
        num_classes: number of classes K (None: read from the model's head).
        sigma: standard deviation of the Gaussian noise, in [0, 1] pixel units.
        denoiser: optional module mapping noisy inputs to clean ones, applied before ``model``
            (denoised smoothing). It is put in eval mode with gradients off during each call.
        batch_size: noisy copies per forward pass.

    Example:
        >>> g = SmoothedClassifier(model, 10, sigma=0.25)
        >>> cert = g.certify(x, n0=100, n=10_000, alpha=0.001, generator=gen)
        >>> cert.prediction, cert.radius
    """

    def __init__(
        self,
        model: nn.Module | Classifier,
        num_classes: int | None = None,
        sigma: float = 0.25,
        denoiser: nn.Module | None = None,
        batch_size: int = 1000,
    ) -> None:
        if not sigma > 0:
            raise InputError(f"sigma must be positive, got {sigma}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.classifier = as_classifier(model)
        self.num_classes = int(num_classes) if num_classes is not None else self.classifier.num_classes
        self.sigma = float(sigma)
        self.denoiser = denoiser
        self.batch_size = int(batch_size)

    # -- sampling --------------------------------------------------------------------------------
    def _base_logits(self, noisy: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            clean = self.denoiser(noisy)
            if not isinstance(clean, torch.Tensor) or clean.shape != noisy.shape:
                shape = tuple(clean.shape) if isinstance(clean, torch.Tensor) else type(clean).__name__
                raise InputError(f"the denoiser must return inputs of shape {tuple(noisy.shape)}, got {shape}")
            noisy = clean
        return self.classifier.logits(noisy)

    def _frozen(self) -> _Frozen:
        return _Frozen(self.classifier.module, self.denoiser)

    def sample_counts(self, x: torch.Tensor, num: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """Class counts (N, K) of the base classifier's predictions on ``num`` noisy copies of each input.

        Copies of several inputs share a forward pass when the batch has room, so small inputs do not
        waste the device; never more than ``batch_size`` copies exist at once.
        """
        device = self.classifier.device
        n_in = x.shape[0]
        k = self.num_classes
        counts = torch.zeros(n_in * k, dtype=torch.long, device=device)
        if num <= 0:
            return counts.view(n_in, k)
        x = x.to(device)
        total = n_in * num
        with self._frozen(), torch.inference_mode():
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                owner = torch.arange(start, stop, device=device) // num
                clean = x[owner]
                noisy = clean + randn_like(clean, gen) * self.sigma
                pred = self._base_logits(noisy).argmax(dim=1)
                counts += torch.bincount(owner * k + pred, minlength=n_in * k)
        return counts.view(n_in, k)

    # -- Cohen et al. ----------------------------------------------------------------------------
    def predict(
        self, x: torch.Tensor, n: int = 1000, alpha: float = 0.001, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``PREDICT`` of Cohen et al.: the top class, or :data:`ABSTAIN` when a two-sided binomial test
        at level ``alpha`` cannot tell the top two classes apart.

        Args:
            x: inputs (N, C, H, W) in [0, 1].
            n: noise samples per input.
            alpha: probability of returning a class other than ``g(x)``.
            generator: source of the noise (default: PyTorch's global generator).

        Returns:
            (N,) int64 predictions on the model's device.
        """
        _check_args(x, n=n, alpha=alpha)
        counts = self.sample_counts(x, n, generator)
        top2 = counts.topk(2 if self.num_classes > 1 else 1, dim=1)
        n_a = top2.values[:, 0]
        n_b = top2.values[:, 1] if self.num_classes > 1 else torch.zeros_like(n_a)
        pvals = torch.tensor(
            [stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(n_a, n_b)],
            dtype=torch.float64,
            device=counts.device,
        )
        pred = top2.indices[:, 0].clone()
        pred[pvals > alpha] = ABSTAIN
        return pred

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 10_000,
        alpha: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """``CERTIFY`` of Cohen et al.: guess the top class from ``n0`` samples, then bound its
        probability from ``n`` fresh samples with a one-sided Clopper-Pearson bound at level ``alpha``.

        With probability at least ``1 - alpha`` (over the noise), a returned class ``c`` with radius
        ``R`` satisfies ``g(x + d) = c`` for every ``||d||_2 < R``.

        Args:
            x: inputs (N, C, H, W) in [0, 1].
            n0: selection samples per input.
            n: estimation samples per input.
            alpha: failure probability of each certificate.
            generator: source of the noise.
        """
        _check_args(x, n=n, alpha=alpha, n0=n0)
        guess = self.sample_counts(x, n0, generator).argmax(dim=1)
        counts = self.sample_counts(x, n, generator)
        n_a = counts.gather(1, guess[:, None])[:, 0]
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        return self._certificate(guess, p_lower, torch.full_like(n_a, n))

    def certify_sequential(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n_max: int = 10_000,
        alpha: float = 0.001,
        radius: float = 0.0,
        generator: torch.Generator | None = None,
        prior: tuple[float, float] = (1.0, 1.0),
    ) -> Certificate:
        """Sequential ``CERTIFY``: stop sampling an input once it is decided whether its smoothed
        prediction is certified at L2 ``radius``.

        After the ``n0`` selection samples, estimation samples are drawn ``batch_size`` at a time for
        the inputs still undecided. A beta-binomial mixture confidence sequence (valid at every sample
        size simultaneously, error ``alpha``) bounds ``pA``; an input stops when its lower bound exceeds
        ``Phi(radius / sigma)`` (certified) or its upper bound falls below it (not certifiable at
        ``radius``), or after ``n_max`` samples. The reported radius ``sigma * Phi^-1(lower)`` is valid
        at the stopping time with probability ``1 - alpha``; it may exceed ``radius``.

        Args:
            x: inputs (N, C, H, W) in [0, 1].
            n0: selection samples per input.
            n_max: most estimation samples per input.
            alpha: failure probability of each certificate.
            radius: the L2 radius the decision is about (0: certified at all).
            generator: source of the noise.
            prior: Beta prior ``(a, b)`` of the mixture; the uniform default suits any ``pA``.

        Returns:
            a :class:`Certificate` whose ``samples`` says how many estimation samples each input used.
        """
        _check_args(x, n=n_max, alpha=alpha, n0=n0)
        if radius < 0:
            raise InputError(f"radius must be non-negative, got {radius}")
        device = self.classifier.device
        guess = self.sample_counts(x, n0, generator).argmax(dim=1)
        target = float(stats.norm.cdf(radius / self.sigma))
        n_in = x.shape[0]
        hits = torch.zeros(n_in, dtype=torch.long, device=device)
        used = torch.zeros(n_in, dtype=torch.long, device=device)
        lower = torch.zeros(n_in, dtype=torch.float64, device=device)
        active = torch.ones(n_in, dtype=torch.bool, device=device)
        x = x.to(device)
        while bool(active.any()):
            idx = active.nonzero()[:, 0]
            # Batches fill the device; steps also grow with the samples drawn, so the bound is checked
            # O(log n_max) times per input (any checking schedule is valid for a confidence sequence).
            grow = max(self.batch_size // idx.numel(), int(used[idx].min()) // 4, 1)
            step = min(grow, int((n_max - used[idx]).min()))
            counts = self.sample_counts(x[idx], step, generator)
            hits[idx] += counts.gather(1, guess[idx, None])[:, 0]
            used[idx] += step
            lo, hi = beta_binomial_cs(hits[idx], used[idx], alpha, prior)
            lower[idx] = lo
            done = (lo > target) | (hi < target) | (used[idx] >= n_max)
            active[idx[done]] = False
        return self._certificate(guess, lower, used)

    def _certificate(self, guess: torch.Tensor, p_lower: torch.Tensor, samples: torch.Tensor) -> Certificate:
        ok = p_lower > 0.5
        radius = torch.zeros_like(p_lower)
        normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64, device=p_lower.device), 1.0)
        radius[ok] = self.sigma * normal.icdf(p_lower[ok].clamp(max=1 - 1e-15))
        pred = torch.where(ok, guess, torch.full_like(guess, ABSTAIN))
        return Certificate(pred, radius, p_lower, samples)

    def __repr__(self) -> str:
        extra = f", denoiser={type(self.denoiser).__name__}" if self.denoiser is not None else ""
        return f"SmoothedClassifier({self.classifier!r}, sigma={self.sigma}{extra})"


class _Frozen:
    """Eval mode and no parameter gradients for the base model and the denoiser, restored on exit."""

    def __init__(self, model: nn.Module, denoiser: nn.Module | None) -> None:
        self._ctx = [frozen(model)] + ([frozen(denoiser)] if denoiser is not None else [])

    def __enter__(self) -> None:
        entered = []
        try:
            for c in self._ctx:
                c.__enter__()
                entered.append(c)
        except BaseException:
            for c in reversed(entered):
                c.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        for c in reversed(self._ctx):
            c.__exit__(None, None, None)


def _check_args(x: torch.Tensor, n: int, alpha: float, n0: int | None = None) -> None:
    check_images(x)
    if n < 1:
        raise InputError(f"the number of noise samples n must be at least 1, got {n}")
    if n0 is not None and n0 < 1:
        raise InputError(f"the number of selection samples n0 must be at least 1, got {n0}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")


# -- confidence bounds ---------------------------------------------------------------------------
def clopper_pearson_lower(k: torch.Tensor, n: int | torch.Tensor, alpha: float) -> torch.Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bounds for ``k`` successes in ``n`` trials.

    The bound Cohen et al. use (``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``).
    Returns float64 on ``k``'s device.
    """
    k_np = k.detach().cpu().double().numpy()
    n_np = torch.as_tensor(n).detach().cpu().double().numpy()
    lo = stats.beta.ppf(alpha, k_np, n_np - k_np + 1)
    out = torch.as_tensor(lo, dtype=torch.float64).nan_to_num(0.0)
    out[torch.as_tensor(k_np) == 0] = 0.0
    return out.to(k.device)


def beta_binomial_cs(
    k: torch.Tensor, n: torch.Tensor, alpha: float, prior: tuple[float, float] = (1.0, 1.0), iters: int = 60
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-uniform (1 - alpha) confidence sequence for a Bernoulli mean (beta-binomial mixture).

    ``{p : B(a + k, b + n - k) / B(a, b) < alpha * p^k (1 - p)^(n - k)}``; by Ville's inequality it
    covers the true mean at every ``n`` simultaneously with probability ``1 - alpha``, so it may be
    checked after every batch and sampling stopped at any data-dependent time. Endpoints are found by
    bisection on each side of ``k / n`` (the log-likelihood is concave). Returns float64 (lower, upper).
    """
    kd, nd = k.double(), n.double()
    a, b = prior
    log_mix = torch.lgamma(a + kd) + torch.lgamma(b + nd - kd) - torch.lgamma(a + b + nd)
    log_mix = log_mix - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    level = log_mix + math.log(alpha)  # p is inside when loglik(p) > level
    phat = kd / nd.clamp_min(1)

    def loglik(p: torch.Tensor) -> torch.Tensor:
        return torch.xlogy(kd, p) + torch.xlogy(nd - kd, 1 - p)

    def solve(lo: torch.Tensor, hi: torch.Tensor, inside_at_hi: bool) -> torch.Tensor:
        for _ in range(iters):
            mid = (lo + hi) / 2
            inside = loglik(mid) > level
            if inside_at_hi:
                hi, lo = torch.where(inside, mid, hi), torch.where(inside, lo, mid)
            else:
                lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
        return lo if inside_at_hi else hi

    zero, one = torch.zeros_like(phat), torch.ones_like(phat)
    lower = solve(zero, phat, inside_at_hi=True)
    upper = solve(phat, one, inside_at_hi=False)
    lower = torch.where(loglik(zero) > level, zero, lower)
    upper = torch.where(loglik(one) > level, one, upper)
    return lower, upper


# -- training recipes ----------------------------------------------------------------------------
def gaussian_augment(
    sigma: float, base: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augmentation ``(x, g) -> base(x, g) + N(0, sigma^2)`` for training a base model under noise.

    Cohen et al. train with the same noise they certify with (no clipping to [0, 1]).
    """

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if base is not None:
            x = base(x, g)
        return x + randn_like(x, g) * sigma

    return augment


def train_noisy_classifier(
    model: nn.Module, data: DataLike, sigma: float, epochs: int = 40, seed: int = 0, **kwargs: object
) -> nn.Module:
    """Gaussian-noise training (Cohen et al. 2019, Section 4): the shared training loop with inputs
    corrupted by ``N(0, sigma^2)`` (after the loop's usual random shift); returns the model in eval mode.

    ``data`` is labelled training data in any form of :data:`mlsafety.core.DataLike`; ``seed`` is the
    recipe's seed. ``kwargs`` go to :func:`mlsafety.zoo.train_classifier` (``lr``, ``batch_size``,
    ``progress``...).
    """
    from mlsafety.zoo import random_shift, train_classifier

    return train_classifier(
        model,
        as_array_dataset(data, "data"),
        epochs=epochs,
        seed=seed,
        augment=gaussian_augment(sigma, random_shift),
        **kwargs,  # type: ignore[arg-type]
    )


# -- attacking the smoothed classifier ------------------------------------------------------------
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
        probs = self.base(noisy).softmax(dim=1).view(n, self.m, -1).mean(dim=1)
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
    (so gradient attacks use Monte-Carlo gradients of the smoothed classifier). By default the
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
    import inspect

    from mlsafety.robustness import attacks

    cls = attacks.ATTACKS.get(name)
    if "l2" not in getattr(cls, "norms", ()):
        raise InputError(f"attack {name!r} has no L2 version")
    accepted = set(inspect.signature(cls.__init__).parameters)
    kept = {k: v for k, v in budget.items() if k in accepted}

    def run(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return attacks.create(name, eps=eps, norm="l2", **kept).attack(module, x, y, generator=generator)

    return run


def certified_accuracy_curve(cert: Certificate, labels: torch.Tensor, radii: list[float]) -> dict[float, torch.Tensor]:
    """For each radius, the boolean (N,) vector "correct and certified at that radius"."""
    return {float(r): cert.certified_accuracy(labels, float(r)) for r in radii}


def default_generator(seed: int = 0, *names: object) -> torch.Generator:
    """A seeded CPU generator for smoothing (``mlsafety.core.generator(seed, "smoothing", *names)``)."""
    return generator(seed, "smoothing", *names)


__all__ = [
    "ABSTAIN",
    "Certificate",
    "Consistency",
    "SmoothedClassifier",
    "SmoothedSoftmax",
    "attack_certificates",
    "beta_binomial_cs",
    "certified_accuracy_curve",
    "clopper_pearson_lower",
    "default_generator",
    "gaussian_augment",
    "registry_attack",
    "smoothed_pgd_l2",
    "train_noisy_classifier",
]
