"""Calibration metrics: ECE (equal-width and equal-mass bins), MCE, RMS error, classwise ECE,
Brier score, NLL and reliability-diagram data.

Confidence is the maximum softmax probability and a prediction is correct when its arg-max is the
label (Guo et al., "On Calibration of Modern Neural Networks", 2017); not max logits. Equal-width
bins are ``[i/B, (i+1)/B)`` with a confidence of exactly 1 in the last bin, the binning of
torchmetrics' ``CalibrationError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import InputError

NORMS = ("l1", "l2", "max")
BINNINGS = ("width", "mass")


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if probs.ndim != 2:
        raise InputError(f"probabilities must have shape (N, K), got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise InputError("calibration metrics need at least one prediction")
    labels = labels.to(probs.device).long()
    if labels.shape != (probs.shape[0],):
        raise InputError(f"labels must have shape ({probs.shape[0]},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise InputError(f"labels must lie in [0, {probs.shape[1]})")
    if not torch.isfinite(probs).all() or float(probs.min()) < 0 or float(probs.max()) > 1 + 1e-6:
        raise InputError("probabilities must be finite and in [0, 1]; pass softmax(logits), not logits")
    return probs.double(), labels


def confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-probability confidence (N,) and correctness (N,) as float64."""
    p, y = _check(probs, labels)
    conf, pred = p.max(dim=1)
    return conf, (pred == y).double()


def bin_index(confidence: torch.Tensor, n_bins: int, binning: str = "width") -> torch.Tensor:
    """Bin of each confidence, row-wise for 2-D input: equal width, or equal mass (by rank)."""
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
    are independent problems (used by the bootstrap). Returns a 0-d tensor, or (B,) for rows.
    """
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    squeeze = confidence.ndim == 1
    conf = confidence.double().reshape(-1, confidence.shape[-1])
    acc = correct.double().reshape(-1, correct.shape[-1]).to(conf.device)
    idx = bin_index(conf, n_bins, binning)
    zeros = torch.zeros(conf.shape[0], n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.scatter_add(1, idx, torch.ones_like(conf))
    gap = (zeros.scatter_add(1, idx, acc) - zeros.scatter_add(1, idx, conf)).abs() / count.clamp_min(1)
    prop = count / conf.shape[1]
    if norm == "l1":
        out = (prop * gap).sum(dim=1)
    elif norm == "l2":
        out = (prop * gap**2).sum(dim=1).sqrt()
    else:
        out = torch.where(count > 0, gap, torch.zeros_like(gap)).amax(dim=1)
    return out[0] if squeeze else out


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins of the max-probability confidence.

    Args:
        probs: class probabilities (N, K).
        labels: true classes (N,).
        n_bins: number of bins.
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
    """Classwise ECE (Kull et al., 2019): the mean over classes ``k`` of the ECE of ``p_k`` as the
    probability of the event ``y = k``, over all inputs."""
    p, y = _check(probs, labels)
    k = p.shape[1]
    onehot = torch.nn.functional.one_hot(y, k).double()
    per_class = calibration_error(p.T.contiguous(), onehot.T.contiguous(), n_bins, "l1", "width")
    return float(per_class.mean())


def brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score of each prediction, ``sum_k (p_k - 1[y = k])^2`` (N,), in [0, 2]."""
    p, y = _check(probs, labels)
    return (p - torch.nn.functional.one_hot(y, p.shape[1]).double()).pow(2).sum(dim=1)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean multi-class Brier score (Brier, 1950): lower is better, 0 for certain and right."""
    return float(brier_per_sample(probs, labels).mean())


def nll_per_sample(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``-log p_y`` of each prediction (N,), with ``p_y`` clamped at ``eps``."""
    p, y = _check(probs, labels)
    return -p.gather(1, y[:, None])[:, 0].clamp_min(eps).log()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (nats)."""
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
    idx = bin_index(conf, n_bins, "width")
    zeros = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.scatter_add(0, idx, torch.ones_like(conf))
    nan = torch.full_like(zeros, float("nan"))
    mean_conf = torch.where(count > 0, zeros.scatter_add(0, idx, conf) / count.clamp_min(1), nan)
    mean_acc = torch.where(count > 0, zeros.scatter_add(0, idx, correct) / count.clamp_min(1), nan)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    return Reliability(edges.cpu(), mean_conf.cpu(), mean_acc.cpu(), count.long().cpu())
