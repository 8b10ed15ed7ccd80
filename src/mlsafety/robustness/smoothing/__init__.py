"""Randomized smoothing: certified L2 robustness (Cohen, Rosenfeld & Kolter, ICML 2019).

* :mod:`~mlsafety.robustness.smoothing.base`: :class:`SmoothedClassifier`, with the paper's
  ``PREDICT`` (abstain unless a two-sided binomial test separates the top two classes) and
  ``CERTIFY`` (a one-sided Clopper-Pearson lower bound on ``pA``,
  :func:`mlsafety.metrics.clopper_pearson_lower`), and denoised smoothing (Salman et al. 2020;
  Carlini et al., "(Certified!!) Adversarial Robustness for Free!", 2023) through ``denoiser=``.
* ``_sequential``: a sequential ``CERTIFY`` (:meth:`SmoothedClassifier.certify_sequential`) that
  stops sampling once a time-uniform confidence sequence (:func:`beta_binomial_cs`) decides.
* ``_noise_training``: the Gaussian-noise training recipe for base models
  (:func:`train_noisy_classifier`).
* :mod:`~mlsafety.robustness.smoothing.attacks`: attacks on the smoothed classifier
  (:class:`SmoothedSoftmax`, :func:`smoothed_pgd_l2`) and the consistency test of certificates
  (:func:`attack_certificates`).

Example:
    >>> from mlsafety.robustness.smoothing import SmoothedClassifier, default_generator
    >>> cert = SmoothedClassifier(model, sigma=0.25).certify(x, generator=default_generator(0))
"""

from mlsafety.metrics import clopper_pearson_lower
from mlsafety.robustness.smoothing._noise_training import gaussian_augment, train_noisy_classifier
from mlsafety.robustness.smoothing._sequential import beta_binomial_cs, sample_until_decided
from mlsafety.robustness.smoothing.attacks import (
    Consistency,
    SmoothedSoftmax,
    attack_certificates,
    registry_attack,
    smoothed_pgd_l2,
)
from mlsafety.robustness.smoothing.base import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    certified_accuracy_curve,
    default_generator,
)

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
    "sample_until_decided",
    "smoothed_pgd_l2",
    "train_noisy_classifier",
]
