"""Cross-validated linear probes on hidden states, fitted for every layer at once.

An L2-regularised logistic regression per layer, fitted jointly with L-BFGS on the sum of the layers'
losses (the problems are independent, so the joint minimum is each layer's minimum) on features
standardised with the training fold's mean and spread. Folds are made of whole groups (rows of one
ETHICS group, or one utilitarianism pair, never straddle a fold), drawn with a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import InputError

L2 = 1e-2
"""Ridge penalty ``(L2 / 2) * ||w||^2`` added to the mean log-loss, on standardised features."""


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, bias: bool = True, l2: float = L2, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer logistic regressions: ``x`` ``(L, n, D)`` float, ``y`` ``(n,)`` in {0, 1}.

    Returns ``(w (L, D), b (L,))`` (``b`` zero without ``bias``), float64.
    """
    x = x.double()
    t = y.double()
    n_layers, _, dim = x.shape
    w = torch.zeros(n_layers, dim, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_layers, dtype=torch.float64, requires_grad=bias)
    params = [w, b] if bias else [w]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = torch.einsum("lnd,ld->ln", x, w) + b[:, None]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, t.expand_as(z), reduction="none").mean(1)
        total = (loss + 0.5 * l2 * (w * w).sum(1)).sum()
        total.backward()  # type: ignore[no-untyped-call]
        return total

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def _standardise(train: torch.Tensor, *others: torch.Tensor, centre: bool = True) -> list[torch.Tensor]:
    mean = train.mean(1, keepdim=True) if centre else torch.zeros_like(train[:, :1])
    std = train.std(1, keepdim=True).clamp(min=1e-6) if train.shape[1] > 1 else torch.ones_like(train[:, :1])
    return [(a - mean) / std for a in (train, *others)]


def group_folds(
    groups: torch.Tensor, k: int, generator: torch.Generator, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """A fold index ``(N,)`` in ``0..k-1`` per row, whole groups per fold, groups shuffled with ``generator``.

    With ``labels`` the folds are stratified (groups dealt out in order of their mean label), so every
    training fold keeps about the overall label balance: on small sets, unstratified folds tilt each
    training fold against its test fold's labels and push a signal-free probe below chance.
    """
    unique, inverse = torch.unique(groups, return_inverse=True)
    if len(unique) < k:
        raise InputError(
            f"a {k}-fold probe needs at least {k} groups, got {len(unique)}; give more data or fewer folds"
        )
    perm = torch.randperm(len(unique), generator=generator)
    if labels is not None:  # stratify: deal groups out in order of their mean label, shuffled within ties
        mean = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, labels.double())
        mean /= torch.bincount(inverse, minlength=len(unique)).double()
        perm = perm[torch.argsort(mean[perm], stable=True)]
    fold_of_group = torch.empty(len(unique), dtype=torch.long)
    fold_of_group[perm] = torch.arange(len(unique)) % k
    return fold_of_group[inverse]


@dataclass(frozen=True)
class ProbeRun:
    """Out-of-fold decisions of a cross-validated probe.

    ``per_layer`` is ``(L, N)`` boolean: whether each row was right with layer ``l``'s probe (trained on
    the other folds). ``nested`` is ``(N,)`` boolean: right with the layer chosen inside the training folds
    alone (on an inner split of a quarter of their groups; by the training fit's own accuracy when they hold
    fewer than 4 groups), so its accuracy is not inflated by picking the best layer on the test rows;
    ``chosen`` holds the layer picked for each fold.
    """

    per_layer: torch.Tensor
    nested: torch.Tensor
    chosen: list[int]


def cross_validate(
    features: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    k: int,
    generator: torch.Generator,
    pairwise: bool = False,
) -> ProbeRun:
    """k-fold probes at every layer, and a nested choice of layer.

    Args:
        features: ``(N, L, D)`` per row and layer; for ``pairwise``, each row is the difference of the
            two items' features (first minus second), and the probe is a utility ``w . h`` with no bias
            trained so that ``w . (h_first - h_second) > 0`` (rows are presented both ways round).
        labels: ``(N,)`` in {0, 1} (for ``pairwise``: 1 when the first item is preferred).
        groups: ``(N,)`` group ids kept within one fold.
        k: number of folds (at least 2).
        generator: draws the folds and the inner split.
        pairwise: fit a bias-free utility on differences.
    """
    if k < 2:
        raise InputError(f"a cross-validated probe needs at least 2 folds, got {k}")
    x = features.transpose(0, 1).double()  # (L, N, D)
    y = labels.long()
    if not pairwise and len(torch.unique(y)) < 2:
        raise InputError("a probe needs both labels among the rows; this subset has one class only")
    folds = group_folds(groups, k, generator, None if pairwise else y)
    per_layer = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
    nested = torch.zeros(x.shape[1], dtype=torch.bool)
    chosen = []
    for f in range(k):
        test, train = folds == f, folds != f
        right = _fit_and_judge(x[:, train], y[train], x[:, test], y[test], pairwise)
        per_layer[:, test] = right
        inner = None
        if len(torch.unique(groups[train])) >= 4:
            inner = group_folds(groups[train], 4, generator, None if pairwise else y[train]) == 0
        if inner is None:  # too few groups to split: the training fit's own accuracy, never the test rows
            xt, yt = x[:, train], y[train]
            layer = int(_fit_and_judge(xt, yt, xt, yt, pairwise).double().mean(1).argmax())
        else:
            xt, yt = x[:, train], y[train]
            inner_right = _fit_and_judge(xt[:, ~inner], yt[~inner], xt[:, inner], yt[inner], pairwise)
            layer = int(inner_right.double().mean(1).argmax())
        chosen.append(layer)
        nested[test] = right[layer]
    return ProbeRun(per_layer, nested, chosen)


def _fit_and_judge(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, pairwise: bool
) -> torch.Tensor:
    """Fit on the training rows, return ``(L, n_test)`` correctness on the test rows."""
    if pairwise:
        xs, xt = _standardise(x_train, x_test, centre=False)  # a difference's sign must survive scaling
        both = torch.cat([xs, -xs], dim=1)
        target = torch.cat([y_train, 1 - y_train]).double()
        w, _ = fit_logistic(both, target, bias=False)
        z = torch.einsum("lnd,ld->ln", xt, w)
    else:
        xs, xt = _standardise(x_train, x_test)
        w, b = fit_logistic(xs, y_train.double())
        z = torch.einsum("lnd,ld->ln", xt, w) + b[:, None]
    pred = (z > 0).long()
    return pred == y_test[None, :]
