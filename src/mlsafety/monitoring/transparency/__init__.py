"""Transparency: attribution maps with one API, their sanity checks, token saliency, feature visualisation.

Every attribution method is registered by name (``saliency``, ``input-x-gradient``, ``smoothgrad``,
``smoothgrad-sq``, ``vargrad``, ``integrated-gradients``, ``occlusion``) and answers
``create(name, **params).attribute(model, x, target) -> maps`` of the shape of ``x``. The figures the
audit stores (sanity-check summaries, integrated gradients' completeness gap, class visualisations'
confidence, each with its interval) come from :mod:`.evaluate`.
"""

from mlsafety.monitoring.transparency import (  # noqa: F401  (registers the methods)
    input_x_gradient,
    integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
)
from mlsafety.monitoring.transparency.base import ATTRIBUTIONS, Attribution, attribute, available, create
from mlsafety.monitoring.transparency.evaluate import (
    ClassVisualisations,
    SanityReport,
    SanitySummary,
    class_visualisations,
    ig_completeness,
    sanity_summary,
)
from mlsafety.monitoring.transparency.feature_vis import ChannelObjective, ImageParam, random_transform, visualize
from mlsafety.monitoring.transparency.input_x_gradient import InputXGradient
from mlsafety.monitoring.transparency.integrated_gradients import IntegratedGradients, quadrature
from mlsafety.monitoring.transparency.occlusion import Occlusion
from mlsafety.monitoring.transparency.saliency import Saliency
from mlsafety.monitoring.transparency.sanity import SanityResult, randomizable_layers, sanity_check, spearman, ssim
from mlsafety.monitoring.transparency.smoothgrad import SmoothGrad, SmoothGradSquared, VarGrad
from mlsafety.monitoring.transparency.token_saliency import find_embedding, token_saliency

__all__ = [
    "ATTRIBUTIONS",
    "Attribution",
    "ChannelObjective",
    "ClassVisualisations",
    "ImageParam",
    "InputXGradient",
    "IntegratedGradients",
    "Occlusion",
    "Saliency",
    "SanityReport",
    "SanityResult",
    "SanitySummary",
    "SmoothGrad",
    "SmoothGradSquared",
    "VarGrad",
    "attribute",
    "available",
    "class_visualisations",
    "create",
    "find_embedding",
    "ig_completeness",
    "quadrature",
    "random_transform",
    "randomizable_layers",
    "sanity_check",
    "sanity_summary",
    "spearman",
    "ssim",
    "token_saliency",
    "visualize",
]
