"""Transparency: attribution maps with one API, their sanity checks, token saliency, feature visualisation.

Every attribution method is registered by name (``saliency``, ``input-x-gradient``, ``smoothgrad``,
``smoothgrad-sq``, ``vargrad``, ``integrated-gradients``, ``occlusion``) with the modalities it
explains as tags (``image``, ``text``) and answers ``create(name, **params).attribute(model, x, target)``:
maps of the shape of ``x`` for images, token scores (N, L) for text (over the token embeddings; see
:mod:`.base`). :func:`explain_text` merges token scores into words (:mod:`.words`). The figures the
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
from mlsafety.monitoring.transparency.base import (
    ATTRIBUTIONS,
    IMAGE,
    TEXT,
    Attribution,
    InputSpace,
    attribute,
    available,
    create,
    is_text,
)
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
from mlsafety.monitoring.transparency.occlusion import Occlusion, replacement_id
from mlsafety.monitoring.transparency.saliency import Saliency
from mlsafety.monitoring.transparency.sanity import (
    SanityResult,
    randomizable_layers,
    randomization_stages,
    sanity_check,
    spearman,
    ssim,
)
from mlsafety.monitoring.transparency.smoothgrad import SmoothGrad, SmoothGradSquared, VarGrad
from mlsafety.monitoring.transparency.token_saliency import (
    TextAttributions,
    explain_text,
    find_embedding,
    token_saliency,
)
from mlsafety.monitoring.transparency.words import Word, merge_pieces, special_mask, words

__all__ = [
    "ATTRIBUTIONS",
    "IMAGE",
    "TEXT",
    "Attribution",
    "ChannelObjective",
    "ClassVisualisations",
    "ImageParam",
    "InputSpace",
    "InputXGradient",
    "IntegratedGradients",
    "Occlusion",
    "Saliency",
    "SanityReport",
    "SanityResult",
    "SanitySummary",
    "SmoothGrad",
    "SmoothGradSquared",
    "TextAttributions",
    "VarGrad",
    "Word",
    "attribute",
    "available",
    "class_visualisations",
    "create",
    "explain_text",
    "find_embedding",
    "ig_completeness",
    "is_text",
    "merge_pieces",
    "quadrature",
    "random_transform",
    "randomizable_layers",
    "randomization_stages",
    "replacement_id",
    "sanity_check",
    "sanity_summary",
    "spearman",
    "special_mask",
    "ssim",
    "token_saliency",
    "visualize",
    "words",
]
