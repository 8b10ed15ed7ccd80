"""Per-input calibration terms from which every metric and each of its bootstrap resamples is
computed (:class:`CalibrationStats`), and classwise ECE, which is computed through them.

Memory. :class:`CalibrationStats` computes every metric, and every bootstrap resample of it, from
per-input terms and a sparse list of per-class bin memberships, reading the probabilities (or
logits) in blocks of rows, so nothing of size N x K is copied (see :mod:`mlsafety.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from mlsafety.core import InputError
from mlsafety.metrics import count_weighted_sums
from mlsafety.monitoring.calibration import _validate
from mlsafety.monitoring.calibration._validate import (
    check_labels,
    check_n_bins,
    check_probs,
    check_shape,
    row_blocks,
)
from mlsafety.monitoring.calibration.binned import (
    Reliability,
    bin_index,
    calibration_error,
    reliability_of,
    weighted_calibration_error,
)
from mlsafety.monitoring.calibration.scoring import NLL_EPS, brier_terms

METRICS = ("ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece", "brier", "nll")
"""Metrics :class:`CalibrationStats` computes, point and bootstrap, by name."""

_BINNED = {"ece": ("l1", "width"), "adaptive_ece": ("l1", "mass"), "mce": ("max", "width"),
           "rms_calibration_error": ("l2", "width")}  # fmt: skip


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., "Beyond temperature scaling", 2019): the mean over classes ``k``
    of the equal-width ECE of ``p_k`` as the probability of the event ``y = k``, over all inputs.

    Computed by :class:`CalibrationStats` in blocks of rows, without an (N, K) copy.
    """
    return CalibrationStats.from_probs(probs, labels, n_bins).value("classwise_ece")


class CalibrationStats:
    """Per-input terms from which every calibration metric and its bootstrap are computed.

    Built in one pass over blocks of rows of the probabilities (or of logits, softmaxed in
    float64 block by block), it keeps O(N) numbers: confidence, correctness, Brier and NLL terms,
    and for classwise ECE the (input, class, bin) memberships of probabilities in bins above the
    first (at most ``n_bins`` per input, as probabilities sum to 1) plus each class's total
    probability. A metric at integer weights (B, N) (bootstrap counts) is then a weighted sum;
    only classwise ECE reads the probabilities again, once per chunk of weights, for the weighted
    class totals. Memory O(N x n_bins + B x N + block), never N x K beyond the input itself.

    Build with :meth:`from_probs` or :meth:`from_logits`; then :meth:`value` gives a metric,
    :meth:`weighted` its value at each row of weights.
    """

    def __init__(
        self,
        confidence: torch.Tensor,
        correct: torch.Tensor,
        brier: torch.Tensor,
        nll: torch.Tensor,
        labels: torch.Tensor,
        n_bins: int,
        num_classes: int,
        blocks: Callable[[], Iterator[tuple[slice, torch.Tensor]]],
    ) -> None:
        self.confidence, self.correct, self.brier, self.nll = confidence, correct, brier, nll
        self.n_bins, self.num_classes = n_bins, num_classes
        self._blocks = blocks
        rows, cols, vals, label_col = [], [], [], []
        total = torch.zeros(num_classes, dtype=torch.float64)
        for sl, p in blocks():
            bins = bin_index(p, n_bins, "width")
            i, k = (bins > 0).nonzero(as_tuple=True)
            rows.append(i + sl.start)
            cols.append(k * n_bins + bins[i, k])
            vals.append(p[i, k])
            y = labels[sl]
            label_col.append(y * n_bins + bins.gather(1, y[:, None])[:, 0])
            ones = torch.ones(1, p.shape[0], dtype=torch.float64)
            total += count_weighted_sums(ones, p, probabilities=True)[0]  # summed as weighted() sums
        self._rows, self._cols, self._vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        self._label_col = torch.cat(label_col)
        self._class_total = total
        self.n = int(confidence.shape[0])

    @classmethod
    def from_probs(cls, probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> CalibrationStats:
        """From class probabilities (N, K) (any float dtype and device; read in float64 blocks)."""
        check_n_bins(n_bins)
        check_shape(probs)
        y = check_labels(labels, probs.shape[0], probs.shape[1]).cpu()
        src = probs.detach()

        def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
            for sl in row_blocks(src.shape[0], src.shape[1]):
                yield sl, src[sl].to("cpu", torch.float64)

        return cls._build(blocks, y, n_bins, src.shape[1], validate=True)

    @classmethod
    def from_logits(
        cls,
        logits: torch.Tensor,
        labels: torch.Tensor,
        n_bins: int = 15,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> CalibrationStats:
        """From logits (N, K): each block is cast to float64, passed through ``transform`` (e.g. a
        fitted calibrator's ``transform``) and softmaxed, exactly as ``softmax(logits.double())``."""
        check_n_bins(n_bins)
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise InputError(f"logits must have shape (N, K) with N > 0, got {tuple(logits.shape)}")
        y = check_labels(labels, logits.shape[0], logits.shape[1]).cpu()
        src = logits.detach()

        def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
            for sl in row_blocks(src.shape[0], src.shape[1]):
                z = src[sl].to("cpu", torch.float64)
                if transform is not None:
                    z = transform(z).double()
                yield sl, z.softmax(dim=1)

        return cls._build(blocks, y, n_bins, src.shape[1], validate=False)

    @classmethod
    def _build(cls, blocks: Callable[[], Iterator[tuple[slice, torch.Tensor]]], y: torch.Tensor, n_bins: int,
               k: int, validate: bool) -> CalibrationStats:  # fmt: skip
        n = y.shape[0]
        conf, correct, brier, nll = (torch.empty(n, dtype=torch.float64) for _ in range(4))
        for sl, p in blocks():
            if validate:
                check_probs(p)
            elif not torch.isfinite(p).all():
                raise InputError("logits contain NaN or infinite values")
            c, pred = p.max(dim=1)
            conf[sl], correct[sl] = c, (pred == y[sl]).double()
            brier[sl] = brier_terms(p, y[sl])
            nll[sl] = -p.gather(1, y[sl, None])[:, 0].clamp_min(NLL_EPS).log()
        return cls(conf, correct, brier, nll, y, n_bins, k, blocks)

    def reliability(self) -> Reliability:
        """Reliability-diagram data of these predictions."""
        return reliability_of(self.confidence, self.correct, self.n_bins)

    def value(self, metric: str) -> float:
        """A metric (one of :data:`METRICS`) of the predictions, as the direct function gives it."""
        if metric in _BINNED:
            norm, binning = _BINNED[metric]
            return float(calibration_error(self.confidence, self.correct, self.n_bins, norm, binning))
        if metric == "brier":
            return float(self.brier.mean())
        if metric == "nll":
            return float(self.nll.mean())
        if metric == "classwise_ece":
            return float(self._classwise(torch.ones(1, self.n, dtype=torch.float64), self._class_total[:, None])[0])
        raise InputError(f"unknown calibration metric {metric!r}; known: {', '.join(METRICS)}")

    def weighted(self, metric: str, weights: torch.Tensor) -> torch.Tensor:
        """The metric of each row of integer weights (B, N): of the sample holding input ``i``
        ``weights[b, i]`` times (a bootstrap resample), without forming it. Returns (B,)."""
        w = weights.double().reshape(-1, self.n)
        if metric in _BINNED:
            norm, binning = _BINNED[metric]
            return weighted_calibration_error(self.confidence, self.correct, w, self.n_bins, norm, binning)
        if metric in ("brier", "nll"):
            return w @ getattr(self, metric) / w.sum(dim=1)
        if metric == "classwise_ece":
            # the weighted class totals (K, B), each block's product exact (count_weighted_sums: the same
            # bits on any thread count; a BLAS product split its sums by the threads) and the blocks added in order
            total = torch.zeros(self.num_classes, w.shape[0], dtype=torch.float64)
            for sl, p in self._blocks():  # one pass over the probabilities per chunk of draws
                total += count_weighted_sums(w[:, sl], p, probabilities=True).T
            step = max(1, _validate.BLOCK_ELEMENTS // (self.num_classes * self.n_bins))  # (K x bins, draws) sums
            return torch.cat([self._classwise(w[s : s + step], total[:, s : s + step])
                              for s in range(0, w.shape[0], step)])  # fmt: skip
        raise InputError(f"unknown calibration metric {metric!r}; known: {', '.join(METRICS)}")

    def _classwise(self, w: torch.Tensor, class_total: torch.Tensor) -> torch.Tensor:
        """Classwise ECE (B,) from weights (B, N) and weighted class totals (K, B)."""
        k, nb, b = self.num_classes, self.n_bins, w.shape[0]
        wt = w.T.contiguous()  # (N, B)
        count = torch.zeros(k * nb, b, dtype=torch.float64)
        conf = torch.zeros(k * nb, b, dtype=torch.float64)
        step = max(1, _validate.BLOCK_ELEMENTS // b)
        for s in range(0, self._rows.shape[0], step):
            rows, cols = self._rows[s : s + step], self._cols[s : s + step]
            wr = wt[rows]
            count.index_add_(0, cols, wr)
            conf.index_add_(0, cols, wr * self._vals[s : s + step, None])
        acc = torch.zeros(k * nb, b, dtype=torch.float64).index_add_(0, self._label_col, wt)
        count, conf, acc = count.reshape(k, nb, b), conf.reshape(k, nb, b), acc.reshape(k, nb, b)
        total = w.sum(dim=1)
        # bin 0 (p < 1/n_bins) holds everything not listed: the rest of the weight and probability
        count[:, 0] = total[None, :] - count[:, 1:].sum(dim=1)
        conf[:, 0] = class_total - conf[:, 1:].sum(dim=1)
        gap = (acc - conf).abs() / count.clamp_min(1)
        per_class = (count / total[None, None, :] * gap).sum(dim=1)  # (K, B)
        return per_class.mean(dim=0)
