"""Mechanistic interpretability: interventions on named hook points, activation / head / path / attribution
patching, the logit lens, and the patching metrics.

Every method takes a :class:`~mlsafety.core.LanguageModel` (or a causal LM module with ``.tokenizer``) and
works through its hook points (:class:`~mlsafety.core.HookPoints`), so the model is used as the user has it.
"""

from mlsafety.monitoring.interp.attention import attention_patterns
from mlsafety.monitoring.interp.attribution_patching import Agreement, agreement, attribution_patching
from mlsafety.monitoring.interp.circuit import CircuitReport, HeadScore, ioi_circuit_report
from mlsafety.monitoring.interp.emergence import (
    Emergence,
    Indicator,
    Leads,
    change_point,
    detect_emergence,
    leading_indicators,
    probe_checkpoints,
)
from mlsafety.monitoring.interp.grokking import (
    GrokkingRun,
    OneLayerTransformer,
    ProgressMeasures,
    excluded_loss,
    fourier_basis,
    grokking_recipe,
    key_frequencies,
    progress_measures,
    restricted_contrast,
    restricted_loss,
)
from mlsafety.monitoring.interp.interventions import ActivationCache, ablated, cache, mean_activations, patched
from mlsafety.monitoring.interp.ioi import IOIDataset, ioi_dataset
from mlsafety.monitoring.interp.logit_lens import LogitLensResult, logit_lens
from mlsafety.monitoring.interp.metrics import PromptMetric, logit_diff, normalised, t_interval
from mlsafety.monitoring.interp.patching import PatchingResult, Site, activation_patching, head_patching
from mlsafety.monitoring.interp.path_patching import path_patching
from mlsafety.monitoring.interp.superposition import (
    ToyModels,
    antipodal_pairs,
    classify_feature,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    feature_superposition,
    geometric_importance,
    train_toy_models,
)

__all__ = [
    "ActivationCache",
    "Agreement",
    "CircuitReport",
    "Emergence",
    "GrokkingRun",
    "HeadScore",
    "IOIDataset",
    "Indicator",
    "Leads",
    "LogitLensResult",
    "OneLayerTransformer",
    "PatchingResult",
    "ProgressMeasures",
    "PromptMetric",
    "Site",
    "ToyModels",
    "ablated",
    "activation_patching",
    "agreement",
    "antipodal_pairs",
    "attention_patterns",
    "attribution_patching",
    "cache",
    "change_point",
    "classify_feature",
    "detect_emergence",
    "dimensions_per_feature",
    "excluded_loss",
    "feature_dimensionality",
    "feature_norms",
    "feature_superposition",
    "fourier_basis",
    "geometric_importance",
    "grokking_recipe",
    "head_patching",
    "ioi_circuit_report",
    "ioi_dataset",
    "key_frequencies",
    "leading_indicators",
    "logit_diff",
    "logit_lens",
    "mean_activations",
    "normalised",
    "patched",
    "path_patching",
    "probe_checkpoints",
    "progress_measures",
    "restricted_contrast",
    "restricted_loss",
    "t_interval",
    "train_toy_models",
]
