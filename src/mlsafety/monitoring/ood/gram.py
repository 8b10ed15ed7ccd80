"""Gram matrices (Sastry & Oore, "Detecting Out-of-Distribution Examples with Gram Matrices", ICML 2020)."""

from __future__ import annotations

import threading

import torch

from mlsafety.core import Classifier, LayerReduce, ModelLike, Outputs, Param, as_classifier, generator
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, layers_problem, register, resolve_layers

EPS = 1e-6
"""Added to a bound before dividing by it (a bound of 0 would give an infinite deviation)."""


_CHUNK = 1 << 18
"""Map values per block of the power loop (1 MB of float32): a block and its power stay in cache."""


def gram_features(powers: int) -> LayerReduce:
    """The reduction of a layer's output to its Gram features ``(N, P, C)`` (float32): for each order
    ``p = 1..P``, the row sums of the Gram matrix of the map raised element-wise to the power ``p``,
    ``G_p = F^p (F^p)^T`` (``F``: the map as ``C x HW``; a vector is a ``C x 1`` map), then the signed
    ``p``-th root. It runs inside the forward hook, so the map is never stored.

    How, for speed (one thread; the costs of issue 19's one-pass goal): the row sums are ``F^p ((F^p)^T 1)``,
    the same numbers in ``C * HW`` instead of ``C^2 * HW`` operations, with the map's column sums
    ``1^T F^p`` taken over ``C`` and the product as ``(1^T F^p) (F^p)^T`` (a row vector times the map, which
    BLAS does fast; ``F^p`` times a column vector goes through a slow batched path). The powers are taken in
    place, block after block of inputs small enough to stay in cache, in two work buffers that the reduction
    keeps from batch to batch (a fresh map-sized tensor per power cost more than the arithmetic). The powers
    are of the map divided by its largest magnitude, so no power overflows, and the roots are taken unscaled
    (rows of ``F`` are ``scale^(2p)`` times those of ``F / scale``, so the root is multiplied by ``scale^2``).
    Everything is float32: the sums always were, and float64 roots cost more than the rest of the reduction;
    a feature beyond float32's range (a map of magnitude above about ``1e19``) becomes infinite."""
    work = threading.local()  # the buffers, per thread: a hook may run in several threads at once

    def reduce(x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        f = x.detach().reshape(n, c, -1).float()
        hw = f.shape[2]
        flat = f.reshape(n, -1)
        scale = torch.maximum(flat.amax(dim=1), flat.amin(dim=1).neg_()).clamp_min_(1e-30)  # F / scale in [-1, 1]
        rows = torch.empty(n, powers, c, dtype=f.dtype, device=f.device)
        step = max(1, min(n, _CHUNK // max(1, c * hw)))
        size = step * c * hw
        buf = getattr(work, "buf", None)
        if buf is None or buf.numel() < 2 * size or buf.device != f.device:
            buf = work.buf = torch.empty(2 * size, dtype=f.dtype, device=f.device)
        for s in range(0, n, step):
            m = min(step, n - s)
            scaled = torch.div(f[s : s + m], scale[s : s + m, None, None], out=buf[: m * c * hw].view(m, c, hw))
            fp = scaled
            for p in range(1, powers + 1):
                if p == 2:
                    fp = torch.mul(scaled, scaled, out=buf[size : size + m * c * hw].view(m, c, hw))
                elif p > 2:
                    fp.mul_(scaled)  # F^p by products, in place (faster than pow)
                if hw == 1:  # a vector: each row is f_c^p sum_c' f_c'^p, no product to batch
                    rows[s : s + m, p - 1] = fp[:, :, 0] * fp[:, :, 0].sum(dim=1, keepdim=True)
                else:
                    rows[s : s + m, p - 1] = torch.bmm(fp.sum(dim=1, keepdim=True), fp.transpose(1, 2)).squeeze(1)
        roots = rows.abs()
        for p in range(2, powers + 1):  # a scalar exponent per order: much faster than a broadcast one
            roots[:, p - 1].pow_(1.0 / p)
        return roots.copysign_(rows).mul_(scale.square()[:, None, None])

    return reduce


def deviations(
    values: torch.Tensor,
    pred: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    expected: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Per input, the summed relative deviation of ``values`` (N, ...) outside its predicted class's range
    ``[low[c], high[c]]`` (``low``, ``high``: (K, ...)), divided by ``expected``:
    ``sum relu(low_c - v) / |low_c + eps| + relu(v - high_c) / |high_c + eps|`` over every value.

    Computed class by class on the inputs sorted by predicted class, as matrix-vector products with the
    weights ``1 / (|bound + eps| expected)``, so that no input gets a copy of its class's bounds."""
    k = low.shape[0]
    order = pred.argsort()
    counts = torch.bincount(pred, minlength=k).tolist()
    g = values.flatten(1).index_select(0, order)
    low, high = low.flatten(1).to(g), high.flatten(1).to(g)
    scale = torch.as_tensor(expected).to(g)
    w_low, w_high = 1.0 / ((low + EPS).abs() * scale), 1.0 / ((high + EPS).abs() * scale)
    inplace = not g.requires_grad
    per_class, start = [], 0
    for c, m in enumerate(counts):
        v = g[start : start + m]
        below, above = low[c] - v, v - high[c]
        below, above = (below.clamp_min_(0), above.clamp_min_(0)) if inplace else (below.relu(), above.relu())
        per_class.append(below @ w_low[c] + above @ w_high[c])
        start += m
    total = torch.cat(per_class) if per_class else g.new_zeros(0)
    return torch.empty_like(total).index_copy(0, order, total)


@register("gram", tags=(IMAGE, OPT_IN))
class Gram(Detector):
    """Anomaly score ``sum_l delta_l(x) / E_val[delta_l]``: how far the Gram features of each layer lie
    outside the range seen for the predicted class, normalised per layer by the mean deviation of held-out
    in-distribution inputs.

    For every layer ``l`` and order ``p`` (1..``powers``) the Gram features (:func:`gram_features`) of the
    fitting inputs give, per predicted class, a minimum and a maximum of every value; a test input's
    deviation ``delta_l`` sums, over its values, how far each falls below the minimum or above the maximum
    of its predicted class, relative to that bound (:func:`deviations`). The paper's validation set is a
    seeded share ``val_share`` of the fitting data held out from the bounds (in-distribution only).

    Deviations from the paper: the layers are :func:`~mlsafety.core.block_layers` (the paper takes every
    convolution's output of a ResNet / DenseNet) unless ``layers`` names them; the Gram matrix is reduced
    to its row sums (as the public implementations do); a class that no bounding input is predicted as has no
    bounds (``seen_`` is False; its rows of ``lows_`` / ``highs_`` are NaN), and an input predicted as it is
    measured against the seen class of largest logit (the paper leaves it undefined; pooled bounds over all
    classes would be the widest of all, scoring such inputs as the least anomalous); a layer whose held-out
    mean deviation is 0 is divided by ``1e-6``; features, bounds and deviations are float32
    (:func:`gram_features`).

    Args:
        powers: the highest order ``P`` (the paper uses 1..10).
        layers: module names of the layers; None: the model's block outputs.
        val_share: share of the fitting data held out for the per-layer normalisation.
        seed: seed of the held-out split.
    """

    needs = frozenset({"logits", "layers"})
    requires_fit = True

    powers = Param(10, int, low=1, high=20, doc="highest order p of the Gram matrices")
    layers: Param[tuple[str, ...] | None] = Param(None, tuple, doc="layer module names; None: block outputs")
    val_share = Param(0.1, float, low=0, high=1, low_open=True, high_open=True, doc="held-out share for E[delta]")
    seed = Param(0, int, doc="seed of the held-out split")

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        return layers_problem(as_classifier(model), self.layers, self.name)

    def _names(self, clf: Classifier) -> list[str]:
        return getattr(self, "layers_", None) or resolve_layers(clf, self.layers, self.name)

    def layer_taps(self, clf: Classifier) -> dict[str, tuple[str, LayerReduce]]:
        reduce = gram_features(self.powers)
        return {f"gram{self.powers}:{n}": (n, reduce) for n in self._names(clf)}

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        # the paper bounds each class by the inputs the model predicts as it (labels are not used)
        names = self._names(clf)
        assert outputs.layers is not None
        pred = outputs.pred
        n, k = pred.shape[0], outputs.logits.shape[1]
        order = torch.randperm(n, generator=generator(self.seed, "gram", "val-split")).to(pred.device)
        n_val = min(max(1, round(self.val_share * n)), n - 1) if n > 1 else 0
        val, bound = order[:n_val], order[n_val:]
        self.seen_ = torch.bincount(pred[bound], minlength=k) > 0
        val_class = self._classes(outputs.logits[val])
        lows, highs, expected = [], [], []
        for name in names:
            g = outputs.layers[f"gram{self.powers}:{name}"]
            gb, cb = g[bound], pred[bound]
            lo = torch.full((k, *g.shape[1:]), torch.nan, dtype=g.dtype, device=g.device)
            hi = lo.clone()
            for c in self.seen_.nonzero().reshape(-1).tolist():
                mine = gb[cb == c]
                lo[c], hi[c] = mine.amin(dim=0), mine.amax(dim=0)
            lows.append(lo)
            highs.append(hi)
            if n_val:
                dev = deviations(g[val], val_class, lo, hi).mean()
            else:
                dev = torch.ones((), dtype=g.dtype, device=g.device)
            expected.append(dev.clamp_min(EPS))
        self.layers_ = names
        self.lows_, self.highs_, self.expected_ = lows, highs, torch.stack(expected)

    def _classes(self, logits: torch.Tensor) -> torch.Tensor:
        """The class whose bounds each input is measured against: the predicted one, or where no bounding input
        was predicted as it, the seen class of largest logit."""
        seen = getattr(self, "seen_", None)  # None: state exported before seen_ existed (scored as it was then)
        if seen is None or bool(seen.all()):
            return logits.argmax(dim=1)
        return logits.detach().masked_fill(~seen.to(logits.device), -torch.inf).argmax(dim=1)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        assert outputs.layers is not None
        pred = self._classes(outputs.logits)
        layers = outputs.layers
        parts = [
            deviations(layers[f"gram{self.powers}:{name}"], pred, self.lows_[i], self.highs_[i], self.expected_[i])
            for i, name in enumerate(self.layers_)
        ]
        return torch.stack(parts).sum(dim=0) if parts else pred.new_zeros(pred.shape[0], dtype=torch.float32)
