"""Pseudo-labelling at test time: hard (Lee 2013, "Pseudo-Label: The Simple and Efficient
Semi-Supervised Learning Method for Deep Neural Networks") and soft pseudo-labels, adapting the
batch-norm affine parameters as TENT does (the test-time variants compared by Wu et al. 2023)."""

from __future__ import annotations

import torch

from mlsafety.core import Param
from mlsafety.robustness.tta.base import GradientTTA, register_tta


@register_tta("hard-pl", tags=("image", "gradient"))
class HardPseudoLabel(GradientTTA):
    """Cross-entropy of each test input against its own predicted class (the arg-max, held fixed).

    The labels are the predictions of the forward pass that also gives the gradient (batch
    statistics, current parameters). Departs from Lee 2013 (a term added to supervised training)
    in having no labelled loss: the test batch is all there is.
    """

    def objective(self, logits: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        labels = logits.detach().argmax(dim=-1)  # piecewise constant: no gradient through it either way
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=-1)


@register_tta("soft-pl", tags=("image", "gradient"))
class SoftPseudoLabel(GradientTTA):
    """Cross-entropy against the sharpened, fixed prediction ``softmax(logits / temperature)``.

    With ``temperature = 1`` the fixed target equals the prediction and the gradient vanishes
    (``softmax - target = 0``), so the target is sharpened; as the temperature goes to 0 this
    becomes :class:`HardPseudoLabel`. The target is held fixed for the optimiser's gradient but
    not for the attack's: unrolled (``create_graph``), it is built from a pass that depends on the
    inputs, so the gradient with respect to malicious inputs includes their effect on the target.
    """

    temperature = Param(0.5, float, low=0, low_open=True, high=1, high_open=True, doc="sharpening of the targets")

    fixed_target = True

    def objective(self, logits: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        ref = logits.detach() if reference is None else reference
        target = (ref / self.temperature).softmax(dim=-1)
        return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean(dim=-1)
