"""Deep ensembles (Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles", NeurIPS 2017): uncertainty of the averaged prediction of several models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, ModelLike, Param, as_classifier, check_images, frozen
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_MEMBERS, Detector, register

STATISTICS = ("entropy", "mutual-information")


def predictive_uncertainty(probs: torch.Tensor, statistic: str = "entropy") -> torch.Tensor:
    """Uncertainty (N,) of member probabilities ``probs`` (S, N, K).

    ``"entropy"``: entropy of the mean prediction ``H(mean_s p_s)`` (total uncertainty);
    ``"mutual-information"``: ``H(mean_s p_s) - mean_s H(p_s)`` (the members' disagreement, the
    epistemic part; 0 for a single member).
    """
    if statistic not in STATISTICS:
        raise InputError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    p = probs.double()
    mean = p.mean(dim=0)
    total = -(mean * mean.clamp_min(1e-300).log()).sum(dim=1)
    if statistic == "entropy":
        return total
    each = -(p * p.clamp_min(1e-300).log()).sum(dim=2).mean(dim=0)
    return (total - each).clamp_min(0)


@register("deep-ensemble", tags=(NEEDS_MEMBERS, IMAGE))
class DeepEnsemble(Detector):
    """Anomaly score = predictive entropy or mutual information of an ensemble of models.

    The members are either given here or passed as the ``model`` argument of :meth:`score` (a
    sequence of models; a single model is an ensemble of one).

    Args:
        members: the ensemble's models (None: take them from ``score``'s ``model``).
        statistic: ``"entropy"`` or ``"mutual-information"``.
    """

    needs = frozenset({"multi-pass"})

    members: Param[Sequence[nn.Module] | None] = Param(
        None, store=False, doc="the ensemble's models (None: score's model argument)"
    )
    statistic = Param("entropy", str, choices=STATISTICS, doc="entropy or mutual-information")

    def fit(self, model, data, batch_size: int = 256):  # type: ignore[no-untyped-def,override]
        """Nothing to learn; returns ``self``."""
        self.fitted_ = True
        return self

    def score(  # type: ignore[override]
        self, model: ModelLike | Sequence[ModelLike], x: torch.Tensor, batch_size: int = 256
    ) -> torch.Tensor:
        """Anomaly scores (N,) of inputs ``x`` under the ensemble."""
        check_images(x)
        members: Sequence[ModelLike]
        if self.members is not None:
            members = self.members
        elif isinstance(model, (nn.Module, Classifier)):
            members = [model]
        else:
            members = list(model)
        if not members:
            raise InputError("deep-ensemble needs at least one member model")
        probs = torch.stack([_probs(as_classifier(m), x, batch_size) for m in members])
        return self._finish(predictive_uncertainty(probs, self.statistic))


def _probs(clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    with frozen(clf.module), torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            out.append(clf.logits(x[start : start + batch_size].to(clf.device)).softmax(dim=1).cpu())
    return torch.cat(out)
