"""KL matching (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", 2022)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, register


@register("kl-matching", tags=(IMAGE, TEXT))
class KLMatching(Detector):
    """Anomaly score ``min_k KL(p || d_k)``, where ``d_k`` is the mean softmax of in-distribution
    inputs the model assigns to class ``k`` (predicted, not true, classes, as in the paper).

    The paper forms the templates from held-out validation inputs: fit this detector on such data; a
    :class:`~mlsafety.monitoring.ood.ScoreCache` given ``held_out`` data (the audit's validation data when it
    has training data) fits it there. On the model's training data the templates come out sharper than the
    posteriors of new in-distribution inputs, which then look less typical.

    Learned: ``templates_`` (K', K), one per class the model predicts on the fit data. A class it never
    predicts there has no template and is left out of the minimum (a template at the overall mean softmax, a
    flat mixture, would make flat, OOD-like predictions look typical).
    """

    needs = frozenset({"logits"})
    requires_fit = True
    fit_held_out = True

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        p = outputs.logits.softmax(dim=1).double()
        pred = p.argmax(dim=1)
        k = p.shape[1]
        sums = torch.zeros(k, k, dtype=p.dtype, device=p.device).index_add_(0, pred, p)
        counts = torch.bincount(pred, minlength=k).to(p.dtype)[:, None]
        templates = (sums / counts.clamp_min(1))[counts[:, 0] > 0]
        self.templates_ = templates.clamp_min(1e-12)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        log_templates = self.templates_.log().T
        rows = max(1, (1 << 21) // max(1, log_templates.shape[1]))  # (rows, K) float64 blocks of 16 MB
        scores = []
        for logits in outputs.logits.split(rows):
            logp = logits.double().log_softmax(dim=1)  # per block, not the engine's shared (N, K) copy
            p = logp.exp()
            # KL(p || d_k) = sum_j p_j log p_j - sum_j p_j log d_kj, for all k at once
            kl = (p * logp).sum(dim=1, keepdim=True) - p @ log_templates
            scores.append(kl.amin(dim=1))
        return torch.cat(scores)
