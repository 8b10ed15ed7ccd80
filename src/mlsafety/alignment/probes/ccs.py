"""Contrast-consistent search (CCS): an unsupervised probe whose readings of x+ and x- are consistent and confident.

Burns, Ye, Klein, Steinhardt, "Discovering Latent Knowledge in Language Models Without Supervision"
(2022). A linear probe ``p(x) = sigmoid(w . x + b)`` on the normalised states minimises

    L = mean_i [ (p(x+_i) - (1 - p(x-_i)))^2 ]  +  mean_i [ min(p(x+_i), p(x-_i))^2 ]

(consistency: the two readings are probabilities of complementary claims; confidence: not both near
0.5). Several random initialisations are trained (full batch, AdamW as in the paper: 1000 epochs,
learning rate 1e-2, 10 restarts) and the one with the lowest final loss is kept. The reading is
``p~ = (p(x+) + 1 - p(x-)) / 2`` and "x+ is true" when ``p~ > 0.5``. The loss is the same for ``(w, b)``
and ``(-w, -b)``, so the sign is fixed without labels by :class:`~mlsafety.alignment.probes.base.Probe`
(see ``reference``).

Deviations: every layer and every restart is trained together as ONE batched optimisation (parameters
``(layers, restarts, D)`` and ``(layers, restarts)``, the losses summed: each problem's gradient is its own
and AdamW acts coordinate by coordinate, so each gets the result it gets alone, up to float summation
order, at the cost of one batched matrix product per step instead of layers x restarts small ones; the
gradient is written out rather than taken by autograd, both sides in one product (4x faster on CPU), AdamW
is the fused kernel and the loop runs on one intra-op thread (:func:`~mlsafety.alignment.probes.base.one_thread`));
initial weights are drawn from N(0, 1/D) with the caller's generator.
"""

from __future__ import annotations

import torch

from mlsafety.alignment.probes.base import Probe, one_thread, register
from mlsafety.core import Param


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """CCS loss per probe: consistency plus confidence, averaged over items (last dimension)."""
    consistency = (p_pos - (1 - p_neg)).pow(2).mean(-1)
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean(-1)
    return consistency + confidence


def ccs_fit(
    pos: torch.Tensor, neg: torch.Tensor, init: torch.Tensor, epochs: int, lr: float, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CCS for L layers x R restarts as one optimisation; the lowest-loss restart of each layer.

    Args:
        pos, neg: normalised states ``(L, N, D)``.
        init: initial weights ``(L, R, D)`` (intercepts start at 0).
        epochs, lr, weight_decay: full-batch AdamW steps and settings.

    Returns:
        ``coef (L, D)``, ``intercept (L,)`` and final ``loss (L,)`` of each layer's best restart.
    """
    with one_thread():
        return _ccs_steps(pos, neg, init, epochs, lr, weight_decay)


def _ccs_steps(
    pos: torch.Tensor, neg: torch.Tensor, init: torch.Tensor, epochs: int, lr: float, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_layers, restarts, _ = init.shape
    n = pos.shape[1]
    x = torch.cat([pos, neg], 1)  # (L, 2N, D): both sides in one product
    x_t = x.transpose(1, 2).contiguous()
    w, b = init.clone(), torch.zeros(n_layers, restarts, 1)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay, fused=True)  # one kernel per step
    for _ in range(epochs):
        p = torch.sigmoid(torch.baddbmm(b, w, x_t))  # (L, R, 2N)
        p_pos, p_neg = p[..., :n], p[..., n:]
        # d loss / d p: consistency 2 (p+ + p- - 1) / N to both sides, confidence 2 min / N to the smaller one
        consistency = 2 * (p_pos + p_neg - 1) / n
        pos_lower = p_pos < p_neg
        confidence = 2 * torch.minimum(p_pos, p_neg) / n
        g_pos = (consistency + torch.where(pos_lower, confidence, 0.0)) * p_pos * (1 - p_pos)
        g_neg = (consistency + torch.where(pos_lower, 0.0, confidence)) * p_neg * (1 - p_neg)
        g = torch.cat([g_pos, g_neg], -1)  # d loss / d logits
        torch.bmm(g, x, out=w.grad)
        b.grad.copy_(g.sum(-1, keepdim=True))
        opt.step()
    final = ccs_loss(torch.sigmoid(torch.baddbmm(b, w, pos.transpose(1, 2))),
                     torch.sigmoid(torch.baddbmm(b, w, neg.transpose(1, 2))))  # fmt: skip
    best = final.argmin(1)
    rows = torch.arange(n_layers)
    return w[rows, best].clone(), b[rows, best, 0].clone(), final[rows, best]


@register("ccs", tags=("unsupervised",))
class CCS(Probe):
    """Contrast-consistent search (Burns et al. 2022); learned ``coef_ (D,)``, ``intercept_``, ``loss_``
    (per layer: ``coefs_``, ``intercepts_``, ``losses_``)."""

    restarts = Param(10, int, low=1, doc="random initialisations; the lowest final loss is kept")
    epochs = Param(1000, int, low=1, doc="full-batch optimisation steps per initialisation")
    lr = Param(1e-2, float, low=0.0, doc="AdamW learning rate")
    weight_decay = Param(1e-2, float, low=0.0, doc="AdamW weight decay")

    def fit(self, *args, **kwargs) -> CCS:  # type: ignore[no-untyped-def]
        super().fit(*args, **kwargs)
        self.loss_ = float(self.losses_[0])
        return self

    def _fit_layers(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        n_layers, _, d = pos.shape
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        init = torch.randn(n_layers, self.restarts, d, generator=g) / d**0.5
        self.coefs_, self.intercepts_, self.losses_ = ccs_fit(pos, neg, init, self.epochs, self.lr, self.weight_decay)

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        bias = self.intercepts_[:, None, None]
        p_pos = torch.sigmoid(torch.baddbmm(bias, pos, self.coefs_[:, :, None]))[:, :, 0]
        p_neg = torch.sigmoid(torch.baddbmm(bias, neg, self.coefs_[:, :, None]))[:, :, 0]
        return 0.5 * (p_pos + 1 - p_neg) - 0.5
