"""Calibration metrics: ECE (equal-width and equal-mass bins), MCE, RMS error, classwise ECE,
Brier score, NLL and reliability-diagram data.

Confidence is the maximum softmax probability and a prediction is correct when its arg-max is the
label (Guo et al., "On Calibration of Modern Neural Networks", 2017); not max logits.

Binning convention. ``n_bins`` equal-width bins ``[i/B, (i+1)/B)``, left-closed, and the last bin
``[(B-1)/B, 1]`` also holds a confidence of exactly 1: there are always exactly ``B`` bins, and
a confidence that lies on an inner edge ``i/B`` goes to the bin above it. This is *not* quite the
binning of torchmetrics' ``CalibrationError``: torchmetrics uses the same left-closed bins but
gives a confidence of exactly 1.0 a bin of its own (a ``B+1``-th bin), so the two agree except when
some confidence is exactly 1.0 (which a float softmax reaches for logit gaps above about 17 in
float32, 37 in float64). Example: confidences 1.0 (wrong) and 0.95 (right): here both share the
last bin, ECE = MCE = |0.5 - 0.975| = 0.475; torchmetrics gives ECE 0.525 and MCE 1.000. We keep
``B`` bins so that a reliability diagram of ``B`` bins shows every input and one saturated input
cannot by itself set MCE to 1. Guo et al.'s reference code uses right-closed bins
``(i/B, (i+1)/B]``, which differ from both only for confidences exactly on an inner edge.

Memory. :class:`CalibrationStats` computes every metric, and every bootstrap resample of it, from
per-input terms and a sparse list of per-class bin memberships, reading the probabilities (or
logits) in blocks of rows, so nothing of size N x K is copied (see :mod:`mlsafety.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mlsafety.core import InputError

NORMS = ("l1", "l2", "max")
BINNINGS = ("width", "mass")
NLL_EPS = 1e-12
"""Floor of the true-class probability in :func:`nll`: one input adds at most ``-log(1e-12) = 27.63`` nats."""
METRICS = ("ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece", "brier", "nll")
"""Metrics :class:`CalibrationStats` computes, point and bootstrap, by name."""

_BLOCK_ELEMENTS = 1 << 20  # rows x classes read at once (8 MB of float64)
_BINNED = {"ece": ("l1", "width"), "adaptive_ece": ("l1", "mass"), "mce": ("max", "width"),
           "rms_calibration_error": ("l2", "width")}  # fmt: skip


def _check_labels(labels: torch.Tensor, n: int, k: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise InputError("labels must be whole class indices, not fractions")
    labels = labels.long()
    if labels.shape != (n,):
        raise InputError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(f"labels must lie in [0, {k})")
    return labels


def _check_shape(probs: torch.Tensor) -> None:
    if probs.ndim != 2:
        raise InputError(f"probabilities must have shape (N, K), got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise InputError("calibration metrics need at least one prediction")


def _check_probs(p: torch.Tensor) -> None:
    if not torch.isfinite(p).all() or float(p.min()) < 0 or float(p.max()) > 1 + 1e-6:
        raise InputError("probabilities must be finite and in [0, 1]; pass softmax(logits), not logits")


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated probabilities (as given, not copied) and labels (long, on the probabilities' device)."""
    _check_shape(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    _check_probs(probs)
    return probs.detach(), labels


def _row_blocks(n: int, k: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_ELEMENTS // max(1, k))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-probability confidence (N,) and correctness (N,) as float64."""
    p, y = _check(probs, labels)
    conf, pred = p.max(dim=1)
    return conf.double(), (pred == y).double()


def bin_index(confidence: torch.Tensor, n_bins: int, binning: str = "width") -> torch.Tensor:
    """Bin of each confidence, row-wise for 2-D input: equal width, or equal mass (by rank).

    Equal width: bin ``i`` is ``[i/B, (i+1)/B)`` and a confidence of exactly 1 is in the last bin
    (see the module docstring for how this differs from torchmetrics). Equal mass: the ``r``-th
    smallest of ``n`` confidences (ties by position) is in bin ``floor(r B / n)``.
    """
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    if binning == "width":
        edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
        return (torch.bucketize(confidence.contiguous(), edges, right=True) - 1).clamp(0, n_bins - 1)
    if binning == "mass":
        n = confidence.shape[-1]
        ranks = confidence.argsort(dim=-1, stable=True).argsort(dim=-1)
        return (ranks * n_bins) // n
    raise InputError(f"binning must be one of {', '.join(BINNINGS)}, got {binning!r}")


def _error_from_sums(count: torch.Tensor, conf: torch.Tensor, acc: torch.Tensor, total: torch.Tensor,
                     norm: str) -> torch.Tensor:  # fmt: skip
    """Binned error (B,) from per-bin sums (B, n_bins) of weights, confidence and correctness."""
    gap = (acc - conf).abs() / count.clamp_min(1)
    prop = count / total[:, None]
    if norm == "l1":
        return (prop * gap).sum(dim=1)
    if norm == "l2":
        return (prop * gap**2).sum(dim=1).sqrt()
    return torch.where(count > 0, gap, torch.zeros_like(gap)).amax(dim=1)


def calibration_error(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "width",
) -> torch.Tensor:
    """Binned calibration error of confidences (N,) against 0/1 outcomes (N,); batched over rows.

    ``l1``: ECE, ``sum_b |B_b|/N |acc_b - conf_b|``; ``l2``: RMS error, the square root of the
    same sum with squares; ``max``: MCE, the largest gap over non-empty bins. Rows of 2-D inputs
    are independent problems. Returns a 0-d tensor, or (B,) for rows.
    """
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    squeeze = confidence.ndim == 1
    conf = confidence.double().reshape(-1, confidence.shape[-1])
    acc = correct.double().reshape(-1, correct.shape[-1]).to(conf.device)
    idx = bin_index(conf, n_bins, binning)
    zeros = torch.zeros(conf.shape[0], n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.scatter_add(1, idx, torch.ones_like(conf))
    total = torch.full((conf.shape[0],), float(conf.shape[1]), dtype=conf.dtype, device=conf.device)
    out = _error_from_sums(count, zeros.scatter_add(1, idx, conf), zeros.scatter_add(1, idx, acc), total, norm)
    return out[0] if squeeze else out


def weighted_calibration_error(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    weights: torch.Tensor,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "width",
) -> torch.Tensor:
    """:func:`calibration_error` of each row of integer ``weights`` (B, N) over inputs (N,).

    Row ``b`` gives the error of the sample that holds input ``i`` ``weights[b, i]`` times (a
    bootstrap resample as counts), computed from per-bin sums without forming that sample: equal
    width bins are fixed per input; equal-mass bins split the rank range ``[0, n_b)`` of the
    weighted sample at ``ceil(j n_b / B)``, and an input's copies may fall on both sides of an edge.
    Memory O(B x N). Ties between distinct inputs of equal confidence are ordered by input index.
    """
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    conf = confidence.double().reshape(-1)
    acc = correct.double().reshape(-1).to(conf.device)
    w = weights.double().to(conf.device).reshape(-1, conf.shape[0])
    total = w.sum(dim=1)
    if binning == "width":
        idx = bin_index(conf, n_bins, "width")
        zeros = torch.zeros(w.shape[0], n_bins, dtype=torch.float64, device=conf.device)
        count = zeros.index_add(1, idx, w)
        sconf = zeros.index_add(1, idx, w * conf)
        sacc = zeros.index_add(1, idx, w * acc)
        return _error_from_sums(count, sconf, sacc, total, norm)
    if binning != "mass":
        raise InputError(f"binning must be one of {', '.join(BINNINGS)}, got {binning!r}")
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    order = conf.argsort(stable=True)
    cs, ks, ws = conf[order], acc[order], w[:, order]
    n_b = total.round().long()
    j = torch.arange(n_bins + 1, device=conf.device)
    edges = ((j[None, :] * n_b[:, None] + n_bins - 1) // n_bins).double()  # first rank of each bin
    # the input holding rank `edge - 1` is the first one whose cumulative count reaches `edge`
    cum = ws.cumsum(dim=1)  # copies of the first j + 1 inputs
    pos = torch.searchsorted(cum, edges).clamp_max(conf.shape[0] - 1)
    has_before = pos > 0
    prev = (pos - 1).clamp_min(0)

    def upto(c: torch.Tensor) -> torch.Tensor:  # cumulative sums over the inputs before `pos`
        return torch.where(has_before, c.gather(1, prev), torch.zeros_like(edges))

    part = edges - upto(cum)  # copies of input `pos` below the edge
    del cum
    sums = []
    for x in (cs, ks):
        c = torch.mul(ws, x).cumsum_(dim=1)
        sums.append((upto(c) + x[pos] * part).diff(dim=1))  # sum of x over the ranks in each bin
        del c
    del ws
    return _error_from_sums(edges.diff(dim=1), sums[0], sums[1], total, norm)


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins of the max-probability confidence.

    Args:
        probs: class probabilities (N, K).
        labels: true classes (N,).
        n_bins: number of bins (binning convention in the module docstring).
    """
    conf, correct = confidence_and_correct(probs, labels)
    return float(calibration_error(conf, correct, n_bins, "l1", "width"))


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE with equal-mass bins (each holds ``N / n_bins`` predictions, by confidence rank)."""
    conf, correct = confidence_and_correct(probs, labels)
    return float(calibration_error(conf, correct, n_bins, "l1", "mass"))


def mce(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over non-empty bins."""
    conf, correct = confidence_and_correct(probs, labels)
    return float(calibration_error(conf, correct, n_bins, "max", "width"))


def rms_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Root-mean-square calibration error (equal-width bins, weighted by bin size)."""
    conf, correct = confidence_and_correct(probs, labels)
    return float(calibration_error(conf, correct, n_bins, "l2", "width"))


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., "Beyond temperature scaling", 2019): the mean over classes ``k``
    of the equal-width ECE of ``p_k`` as the probability of the event ``y = k``, over all inputs.

    Computed by :class:`CalibrationStats` in blocks of rows, without an (N, K) copy.
    """
    return CalibrationStats.from_probs(probs, labels, n_bins).value("classwise_ece")


def brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score of each prediction, ``sum_k (p_k - 1[y = k])^2`` (N,), in [0, 2]."""
    p, y = _check(probs, labels)
    out = torch.empty(p.shape[0], dtype=torch.float64, device=p.device)
    for rows in _row_blocks(p.shape[0], p.shape[1]):
        out[rows] = _brier(p[rows].double(), y[rows])
    return out


def _brier(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (p - torch.nn.functional.one_hot(y, p.shape[1]).double()).pow(2).sum(dim=1)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean multi-class Brier score (Brier, 1950): lower is better, 0 for certain and right."""
    return float(brier_per_sample(probs, labels).mean())


def nll_per_sample(probs: torch.Tensor, labels: torch.Tensor, eps: float = NLL_EPS) -> torch.Tensor:
    """``-log max(p_y, eps)`` of each prediction (N,): at most ``-log(eps)`` (27.63 nats by default)."""
    p, y = _check(probs, labels)
    return -p.gather(1, y[:, None])[:, 0].double().clamp_min(eps).log()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (nats), with ``p_y`` floored at ``1e-12``.

    The floor (:data:`NLL_EPS`) caps one input's term at ``-log(1e-12) = 27.63`` nats, so a model
    that gives a true class probability 0 (a float64 softmax underflows below about ``1e-308``)
    has a finite NLL. Where some ``p_y < 1e-12`` the result is therefore *lower* than the true
    mean ``-log p_y`` (by ``log(1e-12 / p_y) / N`` per such input); with float32 probabilities,
    which cannot hold values below about ``1e-45``, the cap is what bounds the term anyway.
    Compare NLLs across tools only when neither has inputs below the floor.
    """
    return float(nll_per_sample(probs, labels).mean())


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data over equal-width bins.

    Attributes:
        edges: bin edges (n_bins + 1,).
        confidence: mean confidence per bin (n_bins,), NaN where empty.
        accuracy: accuracy per bin (n_bins,), NaN where empty.
        count: predictions per bin (n_bins,).
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> Reliability:
    """Per-bin mean confidence and accuracy for a reliability diagram."""
    conf, correct = confidence_and_correct(probs, labels)
    return _reliability(conf, correct, n_bins)


def _reliability(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> Reliability:
    idx = bin_index(conf, n_bins, "width")
    zeros = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.scatter_add(0, idx, torch.ones_like(conf))
    nan = torch.full_like(zeros, float("nan"))
    mean_conf = torch.where(count > 0, zeros.scatter_add(0, idx, conf) / count.clamp_min(1), nan)
    mean_acc = torch.where(count > 0, zeros.scatter_add(0, idx, correct) / count.clamp_min(1), nan)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    return Reliability(edges.cpu(), mean_conf.cpu(), mean_acc.cpu(), count.long().cpu())


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
            total += p.sum(dim=0)
        self._rows, self._cols, self._vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        self._label_col = torch.cat(label_col)
        self._class_total = total
        self.n = int(confidence.shape[0])

    @classmethod
    def from_probs(cls, probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> CalibrationStats:
        """From class probabilities (N, K) (any float dtype and device; read in float64 blocks)."""
        if n_bins < 1:
            raise InputError(f"n_bins must be at least 1, got {n_bins}")
        _check_shape(probs)
        y = _check_labels(labels, probs.shape[0], probs.shape[1]).cpu()
        src = probs.detach()

        def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
            for sl in _row_blocks(src.shape[0], src.shape[1]):
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
        if n_bins < 1:
            raise InputError(f"n_bins must be at least 1, got {n_bins}")
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise InputError(f"logits must have shape (N, K) with N > 0, got {tuple(logits.shape)}")
        y = _check_labels(labels, logits.shape[0], logits.shape[1]).cpu()
        src = logits.detach()

        def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
            for sl in _row_blocks(src.shape[0], src.shape[1]):
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
                _check_probs(p)
            elif not torch.isfinite(p).all():
                raise InputError("logits contain NaN or infinite values")
            c, pred = p.max(dim=1)
            conf[sl], correct[sl] = c, (pred == y[sl]).double()
            brier[sl] = _brier(p, y[sl])
            nll[sl] = -p.gather(1, y[sl, None])[:, 0].clamp_min(NLL_EPS).log()
        return cls(conf, correct, brier, nll, y, n_bins, k, blocks)

    def reliability(self) -> Reliability:
        """Reliability-diagram data of these predictions."""
        return _reliability(self.confidence, self.correct, self.n_bins)

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
            total = torch.zeros(self.num_classes, w.shape[0], dtype=torch.float64)
            for sl, p in self._blocks():  # one pass over the probabilities per chunk of draws
                total += p.T @ w[:, sl].T
            step = max(1, _BLOCK_ELEMENTS // (self.num_classes * self.n_bins))  # (K x bins, draws) sums
            return torch.cat([self._classwise(w[s : s + step], total[:, s : s + step])
                              for s in range(0, w.shape[0], step)])  # fmt: skip
        raise InputError(f"unknown calibration metric {metric!r}; known: {', '.join(METRICS)}")

    def _classwise(self, w: torch.Tensor, class_total: torch.Tensor) -> torch.Tensor:
        """Classwise ECE (B,) from weights (B, N) and weighted class totals (K, B)."""
        k, nb, b = self.num_classes, self.n_bins, w.shape[0]
        wt = w.T.contiguous()  # (N, B)
        count = torch.zeros(k * nb, b, dtype=torch.float64)
        conf = torch.zeros(k * nb, b, dtype=torch.float64)
        step = max(1, _BLOCK_ELEMENTS // b)
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
