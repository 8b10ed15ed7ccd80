"""Contrast-consistent search (CCS): an unsupervised probe whose readings of x+ and x- are consistent and confident.

Burns, Ye, Klein, Steinhardt, "Discovering Latent Knowledge in Language Models Without Supervision"
(2022). A linear probe ``p(x) = sigmoid(w . x + b)`` on the normalised states minimises

    L = mean_i [ (p(x+_i) - (1 - p(x-_i)))^2 ]  +  mean_i [ min(p(x+_i), p(x-_i))^2 ]

(consistency: the two readings are probabilities of complementary claims; confidence: not both near
0.5). Several random initialisations are trained (full batch, AdamW as in the paper) and the one with
the lowest final loss is kept. The reading is ``p~ = (p(x+) + 1 - p(x-)) / 2`` and "x+ is true" when
``p~ > 0.5``. The loss is the same for ``(w, b)`` and ``(-w, -b)``, so the sign is fixed without labels
by :class:`~mlsafety.alignment.probes.base.Probe` (see ``reference``).

Deviations: the restarts are trained together as one batch of independent probes (same result as one by
one; faster); initial weights are drawn from N(0, 1/D) with the caller's generator.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, register
from mlsafety.core import Param


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """CCS loss per probe: consistency plus confidence, averaged over items (last dimension)."""
    consistency = (p_pos - (1 - p_neg)).pow(2).mean(-1)
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean(-1)
    return consistency + confidence


@register("ccs", tags=("unsupervised",))
class CCS(Probe):
    """Contrast-consistent search (Burns et al. 2022); learned ``coef_ (D,)``, ``intercept_``, ``loss_``."""

    restarts = Param(10, int, low=1, doc="random initialisations; the lowest final loss is kept")
    epochs = Param(1000, int, low=1, doc="full-batch optimisation steps per initialisation")
    lr = Param(1e-2, float, low=0.0, doc="AdamW learning rate")
    weight_decay = Param(1e-2, float, low=0.0, doc="AdamW weight decay")

    def _fit(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        d = pos.shape[1]
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        w = (torch.randn(self.restarts, d, generator=g) / d**0.5).requires_grad_(True)
        b = torch.zeros(self.restarts, requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = ccs_loss(torch.sigmoid(w @ pos.T + b[:, None]), torch.sigmoid(w @ neg.T + b[:, None]))
            loss.sum().backward()  # the restarts are independent: each gets its own gradient
            opt.step()
        with torch.no_grad():
            final = ccs_loss(torch.sigmoid(w @ pos.T + b[:, None]), torch.sigmoid(w @ neg.T + b[:, None]))
            best = int(final.argmin())
            self.coef_ = w[best].detach().clone()
            self.intercept_ = float(b[best])
            self.loss_ = float(final[best])

    def _score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        p_pos = torch.sigmoid(pos @ self.coef_ + self.intercept_)
        p_neg = torch.sigmoid(neg @ self.coef_ + self.intercept_)
        return 0.5 * (p_pos + 1 - p_neg) - 0.5
