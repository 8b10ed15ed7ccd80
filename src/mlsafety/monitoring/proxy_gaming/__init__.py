"""Proxy gaming: reward over-optimisation measured exactly, its scaling laws fitted, and a monitor.

Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization", 2022. ``simulator``
draws a finite world (base policy, gold reward, learned proxies); ``bestofn`` gives best-of-n
exactly on it and, from cached samples, the unbiased "sample once, reuse for every n" estimator;
``kl_regularised`` gives the tilted optimum ``pi0 exp(r / lambda)`` exactly and ``policy_gradient``
a REINFORCE run; ``fits`` fits ``d (alpha - beta d)`` and ``d (alpha - beta log d)`` with bootstrap
intervals; ``monitor`` alarms when the optimised proxy and trusted proxies drift apart.
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
from mlsafety.monitoring.proxy_gaming.kl_regularised import TiltedCurve, kl_regularised
from mlsafety.monitoring.proxy_gaming.monitor import (
    MonitorResult,
    MonitorStep,
    ProxyGamingMonitor,
    best_of_n_monitor,
    monitor_proxy_gaming,
)
from mlsafety.monitoring.proxy_gaming.policy_gradient import PolicyGradientRun, reinforce
from mlsafety.monitoring.proxy_gaming.simulator import World, make_world, standardise, train_proxy

__all__ = [
    "FORMS",
    "BestOfNCurve",
    "BestOfNSamples",
    "MonitorResult",
    "MonitorStep",
    "ObservedPeak",
    "PolicyGradientRun",
    "ProxyGamingMonitor",
    "ScalingFit",
    "SizeTrend",
    "TiltedCurve",
    "World",
    "best_of_n_exact",
    "best_of_n_from_samples",
    "best_of_n_monitor",
    "best_of_n_probs",
    "bon_kl",
    "fit_scaling_law",
    "kl_regularised",
    "make_world",
    "mean_interval",
    "monitor_proxy_gaming",
    "observed_peak",
    "predict",
    "reinforce",
    "size_trend",
    "standardise",
    "train_proxy",
]
