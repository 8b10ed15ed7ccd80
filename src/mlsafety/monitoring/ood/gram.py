"""Gram matrices (Sagar & Oberoi, "Detecting Out-of-Distribution Examples with Gram Matrices", ICML 2020)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, LayerReduce, ModelLike, Outputs, Param, as_classifier, generator
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, layers_problem, register, resolve_layers

EPS = 1e-6
"""Added to a bound before dividing by it (a bound of 0 would give an infinite deviation)."""


def gram_features(powers: int) -> LayerReduce:
    """The reduction of a layer's output to its Gram features ``(N, P, C)``: for each order ``p = 1..P``,
    the row sums of the Gram matrix of the map raised element-wise to the power ``p``,
    ``G_p = F^p (F^p)^T`` (``F``: the map as ``C x HW``; a vector is a ``C x 1`` map), then the signed
    ``p``-th root. The row sums are computed as ``F^p ((F^p)^T 1)``, the same numbers in ``C * HW`` instead of
    ``C^2 * HW`` operations (powers of the map divided by its largest magnitude and sums in float32, so no
    power overflows; the roots in float64), inside the forward hook, so the map is never stored."""

    def reduce(x: torch.Tensor) -> torch.Tensor:
        f = x.detach().reshape(x.shape[0], x.shape[1], -1).float()
        scale = f.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)  # per input: F / scale in [-1, 1]
        f = f / scale
        fp = f.clone()
        rows = torch.empty(x.shape[0], powers, x.shape[1], dtype=f.dtype, device=f.device)
        for p in range(1, powers + 1):
            if p > 1:
                fp.mul_(f)  # F^p by products, in place (faster than pow, one map held)
            rows[:, p - 1] = torch.bmm(fp, fp.sum(dim=1).unsqueeze(2)).squeeze(2)  # (F^p (F^p)^T) 1, no C x C matrix
        # rows of F are scale^(2p) times those of F / scale: the root is taken unscaled, so no power overflows
        r = rows.double()
        inv = 1.0 / torch.arange(1, powers + 1, dtype=r.dtype, device=r.device)[None, :, None]
        return r.sign() * r.abs().pow(inv) * scale.double().square()

    return reduce


def deviations(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Per input, the summed relative deviation of ``values`` (N, ...) outside ``[low, high]`` (N, ...):
    ``relu(low - v) / |low + eps| + relu(v - high) / |high + eps|``, summed over every value."""
    below = (low - values).clamp_min(0) / (low + EPS).abs()
    above = (values - high).clamp_min(0) / (high + EPS).abs()
    return (below + above).flatten(1).sum(dim=1)


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
    to its row sums (as the public implementations do); a class that no fitting input is predicted as takes
    the bounds over all classes; a layer whose held-out mean deviation is 0 is divided by ``1e-6``.

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
        lows, highs, expected = [], [], []
        for name in names:
            g = outputs.layers[f"gram{self.powers}:{name}"]
            gb, cb = g[bound], pred[bound]
            lo = torch.empty(k, *g.shape[1:], dtype=g.dtype, device=g.device)
            hi = torch.empty_like(lo)
            all_lo, all_hi = gb.amin(dim=0), gb.amax(dim=0)
            for c in range(k):
                mine = gb[cb == c]
                lo[c] = mine.amin(dim=0) if mine.shape[0] else all_lo
                hi[c] = mine.amax(dim=0) if mine.shape[0] else all_hi
            lows.append(lo)
            highs.append(hi)
            if n_val:
                dev = deviations(g[val], lo[pred[val]], hi[pred[val]]).mean()
            else:
                dev = torch.ones((), dtype=g.dtype, device=g.device)
            expected.append(dev.clamp_min(EPS))
        self.layers_ = names
        self.lows_, self.highs_, self.expected_ = lows, highs, torch.stack(expected)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        assert outputs.layers is not None
        pred = outputs.pred
        total = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
        for i, name in enumerate(self.layers_):
            g = outputs.layers[f"gram{self.powers}:{name}"]
            total = total + deviations(g, self.lows_[i][pred], self.highs_[i][pred]) / self.expected_[i]
        return total
