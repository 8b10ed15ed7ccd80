"""TENT: test-time entropy minimisation (Wang et al. 2021, "Tent: Fully Test-Time Adaptation by
Entropy Minimization", ICLR)."""

from __future__ import annotations

import torch

from mlsafety.robustness.tta.base import GradientTTA, register_tta


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax of ``logits`` along the last dimension."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@register_tta("tent", tags=("image", "gradient"))
class Tent(GradientTTA):
    """Minimise the mean prediction entropy of the test batch over the batch-norm affine parameters.

    As in the paper, the layers normalise with the test batch's statistics and only the affine
    scale and shift are updated (``steps`` optimiser steps per batch). In a :class:`Stream` the
    updated parameters and the optimiser's moments persist from batch to batch (TENT's online
    setting). Departure: by default the batch is predicted *after* its update
    (``predict_after_update``), which is the adaptation the Distribution Invading Attack targets;
    TENT's reference code returns the outputs of the forward pass before the update
    (``predict_after_update=False``).
    """

    def objective(self, logits: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        return entropy(logits).mean(dim=-1)
