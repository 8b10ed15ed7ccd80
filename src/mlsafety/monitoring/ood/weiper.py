"""WeiPer (Granz et al., "WeiPer: OOD Detection using Weight Perturbations of Class Projections",
NeurIPS 2024), its KL-divergence score WeiPer+KLD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, Outputs, Param, generator
from mlsafety.monitoring.ood.base import (
    IMAGE,
    NEEDS_HEAD_WEIGHTS,
    OPT_IN,
    TEXT,
    Detector,
    features_of,
    head_of,
    register,
)


def row_histograms(values: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """Each row's histogram ``(N, bins)`` over ``bins`` equal half-open bins of ``[low, high)``, as a share of
    the row's ``M`` values (values outside the range, and NaN, count in ``M`` but in no bin).

    The bin edges are ``torch.linspace(low, high, bins + 1)``, and bin ``i`` holds ``edges[i] <= v < edges[i + 1]``
    exactly (as ``torch.bucketize``). For speed, each value's bin is first guessed by arithmetic,
    ``floor((v - low) / step)``, which rounding can put one bin off only for a value within a few ulps of an
    edge, then moved by one where the edges say so; all rows are counted by one ``bincount``. Where the bins are
    so narrow that the guess could be further off (a step under ``1e3`` ulps of the range's magnitude), the
    values go through ``torch.bucketize``."""
    n, m = values.shape
    edges = torch.linspace(low, high, bins + 1, dtype=values.dtype, device=values.device)
    step = (high - low) / bins
    ulp = torch.finfo(values.dtype).eps * max(abs(low), abs(high), 1e-30)
    if not step > 1e3 * ulp:
        idx = torch.bucketize(values, edges, right=True) - 1
    else:
        t = (values - low).mul_(1.0 / step).nan_to_num_(nan=-1.0)  # NaN lands below the range: in no bin
        guess = t.floor_().clamp_(-1, bins).to(torch.int32)  # -1: below the range, bins: above it
        inf = values.new_full((1,), torch.inf)
        ext = torch.cat([-inf, edges, inf])  # bin b (-1..bins) is ext[b + 1] <= v < ext[b + 2]
        at = (guess + 1).flatten()
        lower, upper = ext.index_select(0, at).view_as(values), ext[1:].index_select(0, at).view_as(values)
        idx = guess.add_(values >= upper).sub_((values < lower).to(torch.int32))
    inside = (idx >= 0) & (idx < bins)
    rows = torch.arange(n, dtype=idx.dtype, device=values.device)[:, None] * (bins + 1)
    counts = torch.bincount(torch.where(inside, idx, bins).add_(rows).flatten(), minlength=n * (bins + 1))
    return counts.reshape(n, bins + 1)[:, :bins].to(values.dtype) / m


def smooth(density: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average of width ``width`` along each row ``(N, B)``, edges replicated ("same" alignment:
    ``(width - 1) // 2`` bins before, the rest after)."""
    if width <= 1:
        return density
    before = (width - 1) // 2
    padded = F.pad(density[:, None], (before, width - 1 - before), mode="replicate")
    return F.avg_pool1d(padded, width, stride=1)[:, 0]


def symmetric_kl(train_mean: torch.Tensor, density: torch.Tensor, eps: float, width: int) -> torch.Tensor:
    """``KL(p || q) + KL(q || p)`` (N,) of the mean fit density ``p`` (B,) and each row's smoothed density ``q``."""
    q = smooth(density, width) + eps
    q = q / q.sum(dim=1, keepdim=True)
    p = train_mean + eps
    p = (p / p.sum())[None]
    return ((p - q) * (p.log() - q.log())).sum(dim=1)


_BLOCK = 4096
"""Fit inputs whose perturbed logits are held at once."""


def _widened(low: float, high: float, n: int) -> tuple[float, float]:
    """The histogram range ``[low, high)`` of ``n`` fit rows, widened by one mean gap each side."""
    gap = (high - low) / n
    return low - gap, high + gap + 1e-8


@register("weiper", tags=(IMAGE, TEXT, NEEDS_HEAD_WEIGHTS, OPT_IN))
class WeiPer(Detector):
    """Anomaly score ``KL(f) + lambda_1 KL(W~ f + b~) - lambda_2 MSP~`` (WeiPer+KLD).

    WeiPer perturbs the head's class projections ``repeats`` times: each row ``w_k`` of the head's
    weight becomes ``w_k + delta ||w_k|| n / ||n||`` with ``n`` standard normal (seeded), so the
    perturbed head ``W~`` ((repeats K, D), bias repeated; ``weight_``, ``bias_``) spans a cone of
    directions around every class projection. For an input, the ``D`` values of its penultimate
    feature vector and, separately, the ``repeats K`` values of its perturbed logits are treated as
    samples of a 1-D distribution: a histogram of ``bins`` bins over the range of all fit values
    (widened by one mean gap each side; ``range_``, ``range_perturbed_``), each smoothed by a moving
    average (``smoothing``, ``smoothing_perturbed`` bins), compared with the mean fit histogram
    (``density_``, ``density_perturbed_``) by the symmetric KL divergence (``eps``/``eps_perturbed``
    added before normalising). ``MSP~`` is the mean over the ``repeats`` perturbed heads of the top
    softmax probability. Defaults: the reference implementation's.

    Deviations: none in the formula; the noise is drawn from a torch generator, so the perturbed head
    (and the scores, slightly) differ from the authors' run for run.

    Args:
        delta: perturbation length relative to each class projection's norm.
        repeats: perturbed copies of the head (``r``).
        bins: histogram bins.
        smoothing: moving-average width of the feature histogram (``s_1``).
        smoothing_perturbed: moving-average width of the perturbed-logit histogram (``s_2``).
        eps: added to the feature densities before normalising.
        eps_perturbed: added to the perturbed-logit densities before normalising.
        lambda_1: weight of the perturbed-logit KL divergence.
        lambda_2: weight of the perturbed heads' mean top softmax probability.
        seed: seed of the perturbations.
    """

    needs = frozenset({"features", "logits"})
    requires_fit = True

    delta = Param(2.1, float, low=0, doc="perturbation length relative to each class projection's norm")
    repeats = Param(100, int, low=1, doc="perturbed copies of the head")
    bins = Param(100, int, low=1, doc="histogram bins")
    smoothing = Param(20, int, low=1, doc="moving-average width of the feature histogram")
    smoothing_perturbed = Param(20, int, low=1, doc="moving-average width of the perturbed-logit histogram")
    eps = Param(0.01, float, low=0, low_open=True, doc="added to the feature densities")
    eps_perturbed = Param(0.025, float, low=0, low_open=True, doc="added to the perturbed-logit densities")
    lambda_1 = Param(1.0, float, doc="weight of the perturbed-logit KL divergence")
    lambda_2 = Param(1.0, float, doc="weight of the perturbed heads' mean top softmax probability")
    seed = Param(0, int, doc="seed of the perturbations")

    def perturbed_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the ``repeats`` perturbed heads ``(N, repeats K)``, head after head."""
        f = features.float()
        return f @ self.weight_.to(f.device).T + self.bias_.to(f.device)

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        w, b = head_of(clf)
        w, b = w.float().cpu(), b.float().cpu()
        noise = torch.randn(self.repeats, *w.shape, generator=generator(self.seed, "weiper"))
        noise = F.normalize(noise, dim=2) * (self.delta * torch.linalg.vector_norm(w, dim=1))[None, :, None]
        f = features_of(outputs).float()
        self.weight_ = (w[None] + noise).reshape(-1, w.shape[1]).to(f.device)
        self.bias_ = b.repeat(self.repeats).to(f.device)
        blocks = f.split(_BLOCK)  # the perturbed logits of every fit input are made block by block, twice
        extremes = [torch.aminmax(self.perturbed_logits(fb)) for fb in blocks]
        z_low, z_high = min(float(e.min) for e in extremes), max(float(e.max) for e in extremes)
        self.range_ = _widened(float(f.min()), float(f.max()), f.shape[0])
        self.range_perturbed_ = _widened(z_low, z_high, f.shape[0])
        self.density_ = self._mean_histogram(blocks, False)
        self.density_perturbed_ = self._mean_histogram(blocks, True)

    def _mean_histogram(self, blocks: tuple[torch.Tensor, ...], perturbed: bool) -> torch.Tensor:
        """The mean over the fit rows of their histograms (of features, or of perturbed logits)."""
        total = torch.zeros(self.bins, device=blocks[0].device)
        for fb in blocks:
            values = self.perturbed_logits(fb) if perturbed else fb
            total += row_histograms(values, *(self.range_perturbed_ if perturbed else self.range_), self.bins).sum(
                dim=0
            )
        return total / sum(fb.shape[0] for fb in blocks)

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        f = features_of(outputs).float()
        z = self.perturbed_logits(f)
        kl = symmetric_kl(
            self.density_.to(f.device), row_histograms(f, *self.range_, self.bins), self.eps, self.smoothing
        )
        kl_perturbed = symmetric_kl(
            self.density_perturbed_.to(f.device),
            row_histograms(z, *self.range_perturbed_, self.bins),
            self.eps_perturbed,
            self.smoothing_perturbed,
        )
        k = z.shape[1] // self.repeats
        heads = z.reshape(z.shape[0], self.repeats, k)
        # each head's top softmax probability, 1 / sum_j exp(z_j - max z): no (N, repeats, K) softmax kept
        msp = (heads - heads.amax(dim=2, keepdim=True)).exp().sum(dim=2).reciprocal().mean(dim=1)
        return kl + self.lambda_1 * kl_perturbed - self.lambda_2 * msp
