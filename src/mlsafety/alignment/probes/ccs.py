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
``(layers, restarts, D + 1)``, weights and intercept in one row against inputs ending in 1, the losses
summed: each problem's gradient is its own and AdamW acts coordinate by coordinate, so each gets the result
it gets alone, up to float summation order, at the cost of one batched matrix product per step instead of
layers x restarts small ones); the gradient is written out rather than taken by autograd, both sides in one
product (4x faster on CPU), AdamW's update is written out on the batched tensors (the arithmetic of
``torch.optim.AdamW``, weight decay on the intercept too; its per-step overhead, not the arithmetic, was a
third of the time on small sets) and the loop runs on one intra-op thread
(:func:`~mlsafety.alignment.probes.base.one_thread`); initial weights are drawn from N(0, 1/D) with the
caller's generator.

Early stopping (a deviation from the paper's fixed 1000 epochs; ``tol=0`` restores them): every ``window``
epochs each (layer, restart) problem's loss is compared with its value ``window`` epochs before; a problem
whose loss changed by at most ``tol`` of it keeps its weights from then on and leaves the batch (the batch is
compacted to the layers and restarts still training, so the remaining work shrinks). The kept restart is
still the one with the lowest final loss; it can differ from the full run's only where two restarts' losses
lie within what a stopped one would still have lost (about ``tol`` per window). On smollm2-135m's hidden
states of 34-64 contrast pairs (N < D = 576) the loss does not converge within 1000 epochs: the probe
separates its fit half and the loss then keeps falling as the weights grow against the decay (by 3% or more
per 50 epochs for nearly every problem up to epoch 1000; a layer with a strong planted truth direction does
not level off either), so at the default ``tol`` only the constant layer 0 (every text ends in the same answer
token) stops early there, and the probes, their readings and accuracies are the paper's (checked on the
bench's five sets: ``bench/alignment_probes.py --ccs-check``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mlsafety.alignment.probes.base import Probe, one_thread, register
from mlsafety.core import Param


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """CCS loss per probe: consistency plus confidence, averaged over items (last dimension)."""
    consistency = (p_pos - (1 - p_neg)).pow(2).mean(-1)
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean(-1)
    return consistency + confidence


class CCSRun(NamedTuple):
    """What :func:`ccs_train` returns: each layer's best restart, every problem's weights and training length."""

    coef: torch.Tensor
    """``(L, D)`` weights of each layer's lowest-loss restart."""
    intercept: torch.Tensor
    """``(L,)`` its intercepts."""
    loss: torch.Tensor
    """``(L,)`` its final losses."""
    epochs: torch.Tensor
    """int64 ``(L, R)``: the epochs every (layer, restart) problem ran (``epochs`` unless it converged first)."""
    coefs: torch.Tensor
    """``(L, R, D)`` final weights of every problem."""
    intercepts: torch.Tensor
    """``(L, R)`` their intercepts."""


def ccs_fit(
    pos: torch.Tensor,
    neg: torch.Tensor,
    init: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    tol: float = 0.0,
    window: int = 50,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CCS for L layers x R restarts as one optimisation; ``coef (L, D)``, ``intercept (L,)`` and final
    ``loss (L,)`` of each layer's lowest-loss restart (see :func:`ccs_train` for the arguments)."""
    run = ccs_train(pos, neg, init, epochs, lr, weight_decay, tol, window)
    return run.coef, run.intercept, run.loss


def ccs_train(
    pos: torch.Tensor,
    neg: torch.Tensor,
    init: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    tol: float = 0.0,
    window: int = 50,
) -> CCSRun:
    """CCS for L layers x R restarts as one optimisation, each problem stopped when its loss has converged.

    Args:
        pos, neg: normalised states ``(L, N, D)``.
        init: initial weights ``(L, R, D)`` (intercepts start at 0).
        epochs, lr, weight_decay: full-batch AdamW steps (at most) and settings (betas 0.9 / 0.999, eps 1e-8,
            the weight decay applied to the intercept too, as ``torch.optim.AdamW([w, b])`` does).
        tol: a problem stops once its loss changed by at most ``tol`` times its value ``window`` epochs
            before (checked every ``window`` epochs); its weights are kept from that epoch and it leaves the
            batch. 0: every problem runs all ``epochs`` (Burns et al.).
        window: epochs between two convergence checks.
    """
    with one_thread():
        return _ccs_steps(pos, neg, init, epochs, lr, weight_decay, tol, window)


def _ccs_steps(
    pos: torch.Tensor,
    neg: torch.Tensor,
    init: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    tol: float,
    window: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> CCSRun:
    n_layers, restarts, d = init.shape
    n = pos.shape[1]
    # weights and intercept in one row theta = (w, b) against inputs (x, 1): one product gives the logits of both
    # sides, one the gradient of both parameters
    x = torch.cat([torch.cat([pos, neg], 1), torch.ones(n_layers, 2 * n, 1)], -1)  # (L, 2N, D + 1)
    x_t = x.transpose(1, 2).contiguous()
    theta = torch.cat([init, torch.zeros(n_layers, restarts, 1)], -1)
    avg, avg_sq = torch.zeros_like(theta), torch.zeros_like(theta)  # AdamW's moments
    # the batch holds rows of layers and columns of restarts; once problems converge it is compacted to the
    # layers with a live problem and as many columns as the busiest of them needs (live problems first)
    row_layer = torch.arange(n_layers)  # (L',) layer of each row
    col_restart = torch.arange(restarts).repeat(n_layers, 1)  # (L', R') restart held in each slot
    live = torch.ones(n_layers, restarts, dtype=torch.bool)  # (L', R') the slot's problem is still training
    done_theta = theta.clone()  # where finished problems are stored
    ran = torch.full((n_layers, restarts), epochs)
    previous: torch.Tensor | None = None
    beta1, beta2 = betas
    for epoch in range(1, epochs + 1):
        p = torch.bmm(theta, x_t).sigmoid_()  # (L', R', 2N)
        p_pos, p_neg = p[..., :n], p[..., n:]
        # d loss / d p: consistency 2 (p+ + p- - 1) / N to both sides, confidence 2 min / N to the smaller one;
        # times dp / dlogit = p (1 - p)
        both = p_pos + p_neg - 1
        pos_lower = p_pos < p_neg
        g = torch.cat([p_pos * pos_lower + both, p_neg * ~pos_lower + both], -1)
        g.mul_(p * p - p).mul_(-2 / n)  # d loss / d logits
        grad = torch.bmm(g, x)
        check = tol > 0 and epoch % window == 0 and epoch < epochs
        if check:
            loss = both.pow(2).mean(-1) + torch.minimum(p_pos, p_neg).pow(2).mean(-1)  # before this step
        # AdamW (Loshchilov and Hutter), as torch.optim.AdamW computes it
        theta.mul_(1 - lr * weight_decay)
        avg.lerp_(grad, 1 - beta1)
        avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = avg_sq.sqrt().div_(math.sqrt(1 - beta2**epoch)).add_(eps)
        theta.addcdiv_(avg, denom, value=-lr / (1 - beta1**epoch))
        if not check:
            continue
        if previous is None:
            previous = loss
            continue
        done = live & ((previous - loss).abs() <= tol * previous)
        previous = loss
        if not bool(done.any()):
            continue
        rows, cols = done.nonzero(as_tuple=True)
        layer, restart = row_layer[rows], col_restart[rows, cols]
        done_theta[layer, restart] = theta[rows, cols]
        ran[layer, restart] = epoch
        live = live & ~done
        if not bool(live.any()):
            break
        keep = live.any(1).nonzero()[:, 0]
        width = int(live.sum(1).max())
        if len(keep) * width == live.numel():
            continue  # no smaller: keep the layout, the finished slots idle along
        order = torch.argsort((~live[keep]).to(torch.int8), dim=1, stable=True)[:, :width]  # live slots first
        r = keep[:, None]
        theta, avg, avg_sq = (t[r, order].contiguous() for t in (theta, avg, avg_sq))
        previous, live, col_restart, row_layer = (
            previous[r, order],
            live[r, order],
            col_restart[r, order],
            row_layer[keep],
        )
        x, x_t = x[keep].contiguous(), x_t[keep].contiguous()
    rows, cols = live.nonzero(as_tuple=True)  # still training at the end: their final weights
    done_theta[row_layer[rows], col_restart[rows, cols]] = theta[rows, cols]
    w, b = done_theta[..., :d], done_theta[..., d]
    final = ccs_loss(torch.sigmoid(torch.baddbmm(b[..., None], w, pos.transpose(1, 2))),
                     torch.sigmoid(torch.baddbmm(b[..., None], w, neg.transpose(1, 2))))  # fmt: skip
    best = final.argmin(1)
    every = torch.arange(n_layers)
    return CCSRun(w[every, best].clone(), b[every, best].clone(), final[every, best], ran, w.clone(), b.clone())


@register("ccs", tags=("unsupervised",))
class CCS(Probe):
    """Contrast-consistent search (Burns et al. 2022); learned ``coef_ (D,)``, ``intercept_``, ``loss_``
    (per layer: ``coefs_``, ``intercepts_``, ``losses_``)."""

    restarts = Param(10, int, low=1, doc="random initialisations; the lowest final loss is kept")
    epochs = Param(1000, int, low=1, doc="full-batch optimisation steps per initialisation")
    lr = Param(1e-2, float, low=0.0, doc="AdamW learning rate")
    weight_decay = Param(1e-2, float, low=0.0, doc="AdamW weight decay")
    tol = Param(
        1e-3,
        float,
        low=0.0,
        doc="stop a (layer, restart) problem once its loss changes by at most this share over `window` epochs; "
        "0: every problem runs all epochs (the paper)",
    )
    window = Param(50, int, low=1, doc="epochs between two convergence checks")

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
        run = ccs_train(pos, neg, init, self.epochs, self.lr, self.weight_decay, self.tol, self.window)
        self.coefs_, self.intercepts_, self.losses_, self.epochs_run_ = run[:4]

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        bias = self.intercepts_[:, None, None]
        p_pos = torch.sigmoid(torch.baddbmm(bias, pos, self.coefs_[:, :, None]))[:, :, 0]
        p_neg = torch.sigmoid(torch.baddbmm(bias, neg, self.coefs_[:, :, None]))[:, :, 0]
        return 0.5 * (p_pos + 1 - p_neg) - 0.5
