"""Toy models of superposition: many sparse features stored in fewer dimensions.

Elhage et al. 2022, "Toy Models of Superposition". ``n`` features ``x_i`` are 0 with probability
``S`` (the sparsity) and uniform on [0, 1] otherwise; a model with ``m < n`` hidden dimensions
reconstructs them as ``x' = ReLU(W^T W x + b)`` (``W`` is ``m x n``) and is trained on the
importance-weighted error ``sum_i I_i (x_i - x'_i)^2`` with ``I_i = r^i``. Dense features give the
PCA solution (the ``m`` most important features each get a dimension, the rest are dropped); as the
features get sparser the ReLU model packs more features than dimensions into ``W`` (superposition),
through sharp phase changes, in geometric arrangements (antipodal pairs, pentagons) whose feature
dimensionalities sit at 1, 3/4, 2/3, 1/2, 2/5... The linear model ``x' = W^T W x + b`` never does.

:func:`train_toy_models` trains many instances (one per sparsity / importance setting) at once,
with a leading instance dimension on every tensor, as the paper does. It has its own Adam loop:
:func:`mlsafety.core.train` trains one classifier on a dataset with a classification loss, while
this trains a whole batch of independent autoencoders on freshly drawn synthetic batches with a
per-instance weighted reconstruction loss, which that loop has no place for.

Like the paper, it can train several restarts of every setting from different initialisations and
keep the one with the lowest loss (toy models often settle in local minima, e.g. four features in
antipodal pairs where a pentagon is better); the restarts are compared on one shared evaluation
batch, so their losses differ by the models, not by the data.

Departures from the paper: the learning rate is constant or cosine-decayed to zero (the paper uses
a constant, warm-up or cosine schedule depending on the figure), and the batch size and step count
are the defaults of the signature, chosen to fit a CPU; each instance's ``W`` starts from its own
Xavier-normal draw (std ``sqrt(2 / (m + n))``), where the paper's notebook draws the stacked tensor
at a scale that shrinks with the number of instances. The measures follow the paper's definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, generator


def geometric_importance(n_features: int, decay: float) -> torch.Tensor:
    """Feature importances ``decay ** i`` for ``i = 0 .. n_features - 1`` ``(n_features,)``."""
    if n_features < 1 or decay <= 0:
        raise InputError(f"need n_features >= 1 and decay > 0, got {n_features} and {decay}")
    return decay ** torch.arange(n_features, dtype=torch.float32)


def sample_features(sparsity: torch.Tensor, n_features: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """A batch ``(n_instances, batch, n_features)``: 0 with probability ``sparsity[i]``, else U[0, 1].

    Dense instances draw one uniform ``u`` per entry and keep ``u / p`` where ``u < p`` (``p = 1 - S``;
    given ``u < p``, ``u / p`` is U[0, 1)), one random draw per entry instead of two. Sparse
    instances (``p < 0.1``) place the nonzero entries by geometric gaps between them (an exact
    Bernoulli(``p``) process), so their cost grows with the number of active features, not with
    ``batch * n_features``.
    """
    density = (1 - torch.as_tensor(sparsity, dtype=torch.float32)).reshape(-1)
    total = batch * n_features
    out = torch.zeros(density.numel(), total)
    for i, p in enumerate(density.tolist()):
        if p >= 0.1:
            u = torch.rand(total, generator=g)
            out[i] = torch.where(u < p, u / p, 0.0)
            continue
        pos = torch.empty(0, dtype=torch.long)
        last = -1
        while last < total - 1:  # draw gaps until the process has passed the end of the batch
            k = int(total * p + 6 * (total * p) ** 0.5) + 16
            gaps = torch.empty(k).geometric_(p, generator=g).long()
            step = last + gaps.cumsum(0)
            pos = torch.cat([pos, step])
            last = int(step[-1])
        pos = pos[pos < total]
        out[i, pos] = torch.rand(pos.numel(), generator=g)
    return out.reshape(-1, batch, n_features)


@dataclass(frozen=True)
class ToyModels:
    """Trained instances: ``W`` ``(I, m, n)``, ``b`` ``(I, n)``, each one's loss ``(I,)`` on the evaluation batch."""

    W: torch.Tensor
    b: torch.Tensor
    loss: torch.Tensor
    linear: bool


def reconstruct(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, linear: bool = False) -> torch.Tensor:
    """``x' = ReLU(W^T W x + b)`` (or without the ReLU) for ``x`` ``(I, B, n)``, per instance."""
    out = torch.baddbmm(b.unsqueeze(1), torch.bmm(x, W.transpose(1, 2)), W)
    return out if linear else torch.relu(out)


def _init_weights(n_inst: int, n_hidden: int, n_features: int, g: torch.Generator) -> torch.Tensor:
    """Xavier-normal ``W`` per instance: std ``sqrt(2 / (m + n))``, the same however many instances share a batch.

    (The paper's notebook applies ``xavier_normal_`` to the stacked ``(I, n, m)`` tensor, whose fans
    then count the instances; its scale shrinks as more settings are trained together.)
    """
    return torch.randn(n_inst, n_hidden, n_features, generator=g) * (2 / (n_hidden + n_features)) ** 0.5


def _weighted_error(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, imp: torch.Tensor, linear: bool) -> torch.Tensor:
    """Mean over the batch of ``sum_i I_i (x_i - x'_i)^2`` per instance ``(I,)``; ``imp`` is ``(I, n)``."""
    return (imp.unsqueeze(1) * (x - reconstruct(W, b, x, linear)).pow(2)).sum(2).mean(1)


def _fit(
    W: torch.Tensor,
    b: torch.Tensor,
    imp: torch.Tensor,
    draw: Callable[[], torch.Tensor],
    linear: bool,
    steps: int,
    lr: float,
    cosine: bool,
) -> None:
    """Adam on ``W`` ``(I, m, n)`` and ``b`` ``(I, n)`` in place, one batch ``draw()`` ``(I, B, n)`` per step.

    The objective is the sum over instances of each one's :func:`_weighted_error`; the instances
    share no parameter, and Adam's update is elementwise, so each instance trains exactly as it
    would alone. The gradient is written out by hand (no autograd graph, in-place buffers):
    with ``h = x W^T``, ``z = h W + b`` and ``d = 2 I (ReLU(z) - x) 1[z > 0] / B``,
    ``dL/dW = h^T d + (d W^T)^T x`` and ``dL/db = sum_batch d``.
    """
    W.grad, b.grad = torch.zeros_like(W), torch.zeros_like(b)
    opt = torch.optim.Adam([W, b], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    for _ in range(steps):
        x = draw()
        scale = imp.unsqueeze(1) * (2 / x.shape[1])
        with torch.no_grad():
            h = torch.bmm(x, W.transpose(1, 2))
            z = torch.baddbmm(b.unsqueeze(1), h, W)
            mask = None if linear else z > 0
            d = z.sub_(x)  # z is not needed again: reuse its buffer
            if mask is not None:
                d.mul_(mask)
            d.mul_(scale)
            torch.bmm(h.transpose(1, 2), d, out=W.grad)
            W.grad.baddbmm_(torch.bmm(d, W.transpose(1, 2)).transpose(1, 2), x)
            torch.sum(d, 1, out=b.grad)
        opt.step()
        if sched is not None:
            sched.step()


def train_toy_models(
    n_features: int,
    n_hidden: int,
    sparsity: torch.Tensor,
    importance: torch.Tensor,
    linear: bool = False,
    steps: int = 4000,
    batch: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    restarts: int = 1,
    cosine: bool = False,
    eval_batch: int = 8192,
) -> ToyModels:
    """Train one toy model per (sparsity, importance) setting, all at once.

    Every setting and restart is one instance of a batched model (``bmm`` over a leading instance
    dimension) trained by one optimiser; see :func:`_fit`.

    Args:
        n_features: ``n``.
        n_hidden: ``m`` (usually < n).
        sparsity: ``(I,)`` probability that a feature is zero, per instance, in [0, 1).
        importance: ``(n,)`` shared or ``(I, n)`` per-instance importances.
        linear: train the linear model ``W^T W x + b`` instead of the ReLU one.
        steps: Adam steps (a fresh batch each step).
        batch: examples per step.
        lr: Adam learning rate (the peak one when ``cosine``).
        seed: seed of the initialisations and the data.
        restarts: independent initialisations per setting; the one with the lowest loss on the
            evaluation batch is kept.
        cosine: decay the learning rate to zero on a cosine over the steps.
        eval_batch: examples of the evaluation batch (drawn once, shared by a setting's restarts).

    Returns:
        The trained :class:`ToyModels`, one per setting; ``loss`` is each kept model's mean weighted
        error on the evaluation batch.
    """
    sparsity = torch.as_tensor(sparsity, dtype=torch.float32).reshape(-1)
    n_set = sparsity.numel()
    if n_features < 1 or n_hidden < 1:
        raise InputError(f"need n_features >= 1 and n_hidden >= 1, got {n_features} and {n_hidden}")
    if ((sparsity < 0) | (sparsity >= 1)).any():
        raise InputError("sparsity must lie in [0, 1) for every instance")
    if restarts < 1 or steps < 1 or batch < 1 or eval_batch < 1:
        raise InputError(
            f"restarts, steps, batch and eval_batch must be >= 1, got {restarts}, {steps}, {batch}, {eval_batch}"
        )
    imp = torch.as_tensor(importance, dtype=torch.float32)
    if imp.shape not in ((n_features,), (n_set, n_features)):
        raise InputError(f"importance must be ({n_features},) or ({n_set}, {n_features}), got {tuple(imp.shape)}")
    imp = imp.expand(n_set, n_features)
    # Instance r * n_set + i is restart r of setting i.
    all_sparsity, all_imp = sparsity.repeat(restarts), imp.repeat(restarts, 1)
    n_inst = n_set * restarts
    g = generator(seed, "superposition", n_features, n_hidden)
    W = _init_weights(n_inst, n_hidden, n_features, g).requires_grad_()
    b = torch.zeros(n_inst, n_features, requires_grad=True)
    _fit(W, b, all_imp, lambda: sample_features(all_sparsity, n_features, batch, g), linear, steps, lr, cosine)
    with torch.no_grad():
        loss = torch.empty(restarts, n_set)
        for i in range(n_set):  # one setting at a time: the evaluation batch of all of them may not fit
            x = sample_features(sparsity[i : i + 1], n_features, eval_batch, g).expand(restarts, -1, -1)
            rows = torch.arange(restarts) * n_set + i
            loss[:, i] = _weighted_error(W[rows], b[rows], x, all_imp[rows], linear)
        best = loss.argmin(0)
        pick = best * n_set + torch.arange(n_set)
        return ToyModels(W[pick].detach().clone(), b[pick].detach().clone(), loss.min(0).values, linear)


def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """``||W_i||`` for each feature (column) of ``W`` ``(..., m, n)`` -> ``(..., n)``."""
    return W.norm(dim=-2)


def _overlaps(W: torch.Tensor) -> torch.Tensor:
    """``(W_i_hat . W_j)^2`` ``(..., n, n)`` (row i, column j); zero rows for zero features."""
    norms = feature_norms(W)
    unit = W / norms.clamp_min(1e-12).unsqueeze(-2)
    return (unit.transpose(-1, -2) @ W).pow(2)


def feature_superposition(W: torch.Tensor) -> torch.Tensor:
    """Interference of each feature with the others: ``sum_{j != i} (W_i_hat . W_j)^2`` -> ``(..., n)``.

    The paper's superposition measure (its colour in the ``W`` figures). It uses the unit vector of
    ``W_i``, so it is meaningful only for represented features: a feature with a tiny ``W_i`` along
    a represented one scores 1. Read it together with :func:`feature_norms` (as
    :func:`classify_feature` does).
    """
    ov = _overlaps(W)
    return ov.sum(-1) - ov.diagonal(dim1=-2, dim2=-1)


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """``D* = m / ||W||_F^2``: hidden dimensions per (effectively) represented feature -> ``(...)``."""
    return W.shape[-2] / W.pow(2).sum((-2, -1))


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` per feature -> ``(..., n)`` (0 for a zero feature).

    1 for a feature with a dimension of its own, 1/2 for each of an antipodal pair, 2/5 for the
    vertices of a pentagon in a plane.
    """
    denom = _overlaps(W).sum(-1)
    return W.pow(2).sum(-2) / denom.clamp_min(1e-12) * (denom > 0)


def antipodal_pairs(W: torch.Tensor, min_norm: float = 0.5, max_cos: float = -0.9) -> list[tuple[int, int]]:
    """Pairs of represented features of one instance ``W`` ``(m, n)`` that point in opposite directions.

    Args:
        W: one instance's weights.
        min_norm: a feature counts as represented when ``||W_i||`` exceeds it.
        max_cos: the pair's cosine must be below it.
    """
    if W.ndim != 2:
        raise InputError(f"antipodal_pairs takes one instance's W (m, n), got shape {tuple(W.shape)}")
    norms = feature_norms(W)
    unit = W / norms.clamp_min(1e-12)
    cos = unit.T @ unit
    idx = [int(i) for i in torch.nonzero(norms > min_norm).flatten()]
    return [(i, j) for a, i in enumerate(idx) for j in idx[a + 1 :] if float(cos[i, j]) < max_cos]


REPRESENTATION = ("not represented", "dedicated", "superposed")
"""Labels of :func:`classify_feature`."""


def classify_feature(
    W: torch.Tensor, feature: int, min_norm: float = 0.5, min_superposition: float = 0.5
) -> torch.Tensor:
    """How ``feature`` is stored, per instance of ``W`` ``(..., m, n)``: an index into :data:`REPRESENTATION`.

    0: ``||W_i|| <= min_norm``; 2: represented and ``superposition > min_superposition``; else 1.
    This is the colouring of the paper's two-features-in-one-dimension phase diagram.
    """
    norm = feature_norms(W)[..., feature]
    sup = feature_superposition(W)[..., feature]
    out = torch.ones_like(norm, dtype=torch.long)
    out[sup > min_superposition] = 2
    out[norm <= min_norm] = 0
    return out
