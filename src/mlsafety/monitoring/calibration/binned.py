"""Binned calibration errors: ECE (equal-width and equal-mass bins), MCE, RMS error, and the
reliability-diagram data, from the max-probability confidence.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import InputError
from mlsafety.monitoring.calibration._validate import check, check_n_bins

NORMS = ("l1", "l2", "max")
BINNINGS = ("width", "mass")


def confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-probability confidence (N,) and correctness (N,) as float64."""
    p, y = check(probs, labels)
    conf, pred = p.max(dim=1)
    return conf.double(), (pred == y).double()


def bin_index(confidence: torch.Tensor, n_bins: int, binning: str = "width") -> torch.Tensor:
    """Bin of each confidence, row-wise for 2-D input: equal width, or equal mass (by rank).

    Equal width: bin ``i`` is ``[i/B, (i+1)/B)`` and a confidence of exactly 1 is in the last bin
    (see the module docstring for how this differs from torchmetrics). Equal mass: the ``r``-th
    smallest of ``n`` confidences (ties by position) is in bin ``floor(r B / n)``.
    """
    check_n_bins(n_bins)
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
    check_n_bins(n_bins)
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
    return reliability_of(conf, correct, n_bins)


def reliability_of(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> Reliability:
    """Reliability data of float64 confidences (N,) and 0/1 correctness (N,), equal-width bins."""
    idx = bin_index(conf, n_bins, "width")
    zeros = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.scatter_add(0, idx, torch.ones_like(conf))
    nan = torch.full_like(zeros, float("nan"))
    mean_conf = torch.where(count > 0, zeros.scatter_add(0, idx, conf) / count.clamp_min(1), nan)
    mean_acc = torch.where(count > 0, zeros.scatter_add(0, idx, correct) / count.clamp_min(1), nan)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    return Reliability(edges.cpu(), mean_conf.cpu(), mean_acc.cpu(), count.long().cpu())
