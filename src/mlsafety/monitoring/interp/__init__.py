"""Mechanistic interpretability: interventions on named hook points, activation / head / path / attribution
patching, the logit lens, and the patching metrics.

Every method takes a :class:`~mlsafety.core.LanguageModel` (or a causal LM module with ``.tokenizer``) and
works through its hook points (:class:`~mlsafety.core.HookPoints`), so the model is used as the user has it.
"""

from mlsafety.monitoring.interp.attention import attention_patterns
from mlsafety.monitoring.interp.attribution_patching import Agreement, agreement, attribution_patching
from mlsafety.monitoring.interp.circuit import CircuitReport, HeadScore, ioi_circuit_report
from mlsafety.monitoring.interp.interventions import ActivationCache, ablated, cache, mean_activations, patched
from mlsafety.monitoring.interp.ioi import IOIDataset, ioi_dataset
from mlsafety.monitoring.interp.logit_lens import LogitLensResult, logit_lens
from mlsafety.monitoring.interp.metrics import PromptMetric, logit_diff, normalised, t_interval
from mlsafety.monitoring.interp.patching import PatchingResult, Site, activation_patching, head_patching
from mlsafety.monitoring.interp.path_patching import path_patching

__all__ = [
    "ActivationCache",
    "Agreement",
    "CircuitReport",
    "HeadScore",
    "IOIDataset",
    "LogitLensResult",
    "PatchingResult",
    "PromptMetric",
    "Site",
    "ablated",
    "activation_patching",
    "agreement",
    "attention_patterns",
    "attribution_patching",
    "cache",
    "head_patching",
    "ioi_circuit_report",
    "ioi_dataset",
    "logit_diff",
    "logit_lens",
    "mean_activations",
    "normalised",
    "patched",
    "path_patching",
    "t_interval",
]
