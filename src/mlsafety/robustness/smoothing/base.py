"""The smoothed classifier: Monte-Carlo class counts, ``PREDICT`` and ``CERTIFY`` (Cohen et al. 2019).

Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is constant on
the L2 ball of radius ``sigma * Phi^-1(pA)`` around ``x`` when the top class has probability
``pA >= 1/2``. Denoised smoothing (Salman et al., "Denoised Smoothing: A Provable Defense for
Pretrained Classifiers", 2020) is the ``denoiser=`` argument: noisy inputs are denoised before the
base classifier.

Noise is drawn on the generator's device (CPU by default) in batches of ``batch_size`` and moved to
the model's device, so results are reproducible across devices and at most ``batch_size`` noisy
copies are ever in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from scipy import stats
from torch import nn

from mlsafety.core import InputError, ModelLike, as_classifier, check_images, frozen, generator, randn_like
from mlsafety.metrics import clopper_pearson_lower
from mlsafety.robustness.smoothing._sequential import sample_until_decided

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
        model: ModelLike,
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

    @contextmanager
    def _frozen(self) -> Iterator[None]:
        """Eval mode and no parameter gradients for the base model and the denoiser, restored on exit."""
        with ExitStack() as stack:
            stack.enter_context(frozen(self.classifier.module))
            if self.denoiser is not None:
                stack.enter_context(frozen(self.denoiser))
            yield

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
                logits = self._base_logits(noisy)
                if logits.shape[1] > k:  # a class >= k would be counted for the next input
                    raise InputError(f"the model has {logits.shape[1]} classes, more than num_classes={k}")
                counts += torch.bincount(owner * k + logits.argmax(dim=1), minlength=n_in * k)
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
        probability from ``n`` fresh samples with a one-sided Clopper-Pearson bound at level ``alpha``
        (:func:`mlsafety.metrics.clopper_pearson_lower`).

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

        After the ``n0`` selection samples, estimation samples are drawn for the inputs still
        undecided until a time-uniform confidence sequence (:func:`sample_until_decided`) says whether
        ``pA`` clears ``Phi(radius / sigma)``, or ``n_max`` samples are spent. The reported radius
        ``sigma * Phi^-1(lower)`` is valid at the stopping time with probability ``1 - alpha``; it may
        exceed ``radius``. ``x``, ``n0``, ``alpha`` and ``generator`` are as in :meth:`certify`.

        Args:
            n_max: most estimation samples per input.
            radius: the L2 radius the decision is about (0: certified at all).
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
        x = x.to(device)

        def hits(idx: torch.Tensor, step: int) -> torch.Tensor:
            return self.sample_counts(x[idx], step, generator).gather(1, guess[idx, None])[:, 0]

        lower, used = sample_until_decided(hits, x.shape[0], n_max, alpha, target, self.batch_size, prior, device)
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


def _check_args(x: torch.Tensor, n: int, alpha: float, n0: int | None = None) -> None:
    check_images(x)
    if n < 1:
        raise InputError(f"the number of noise samples n must be at least 1, got {n}")
    if n0 is not None and n0 < 1:
        raise InputError(f"the number of selection samples n0 must be at least 1, got {n0}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")


def certified_accuracy_curve(cert: Certificate, labels: torch.Tensor, radii: list[float]) -> dict[float, torch.Tensor]:
    """For each radius, the boolean (N,) vector "correct and certified at that radius"."""
    return {float(r): cert.certified_accuracy(labels, float(r)) for r in radii}


def default_generator(seed: int = 0, *names: object) -> torch.Generator:
    """A seeded CPU generator for smoothing (``mlsafety.core.generator(seed, "smoothing", *names)``)."""
    return generator(seed, "smoothing", *names)
