"""Proxy gaming: reward over-optimisation measured exactly, its scaling laws fitted, and a monitor.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022. ``simulator``
draws a finite world (base policy, gold reward, learned proxies); ``bestofn`` gives best-of-n
exactly on it and, from cached samples, the unbiased "sample once, reuse for every n" estimator;
``fits`` fits ``d (alpha - beta d)`` and ``d (alpha - beta log d)`` with bootstrap intervals.
"""

from __future__ import annotations

from mlsafety.monitoring.proxy_gaming.bestofn import (
    BestOfNCurve,
    BestOfNSamples,
    best_of_n_exact,
    best_of_n_from_samples,
    best_of_n_probs,
    bon_kl,
    mean_interval,
)
from mlsafety.monitoring.proxy_gaming.fits import (
    FORMS,
    ObservedPeak,
    ScalingFit,
    SizeTrend,
    fit_scaling_law,
    observed_peak,
    predict,
    size_trend,
)
from mlsafety.monitoring.proxy_gaming.simulator import World, make_world, standardise, train_proxy

__all__ = [
    "FORMS",
    "BestOfNCurve",
    "BestOfNSamples",
    "ObservedPeak",
    "ScalingFit",
    "SizeTrend",
    "World",
    "best_of_n_exact",
    "best_of_n_from_samples",
    "best_of_n_probs",
    "bon_kl",
    "fit_scaling_law",
    "make_world",
    "mean_interval",
    "observed_peak",
    "predict",
    "size_trend",
    "standardise",
    "train_proxy",
]
