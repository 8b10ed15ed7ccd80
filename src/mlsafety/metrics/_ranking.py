"""Ranking metrics for anomaly scores (higher = more anomalous), batched over rows.

Every function accepts 1-D score tensors, or 2-D tensors whose rows are independent problems (used
by the vectorised bootstrap). Ties are handled exactly as scikit-learn does: tied scores form one
threshold.
"""

from __future__ import annotations

import torch

from mlsafety.core._errors import InputError


def _as_rows(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    a = torch.as_tensor(in_scores)
    b = torch.as_tensor(out_scores).to(a.device)
    if a.ndim != b.ndim or a.ndim not in (1, 2):
        raise InputError("scores must both be 1-D (or both 2-D batches of rows)")
    if a.shape[-1] == 0 or b.shape[-1] == 0:
        raise InputError("ranking metrics need at least one in-distribution and one OOD score")
    squeeze = a.ndim == 1
    a = a.reshape(-1, a.shape[-1]).double()
    b = b.reshape(-1, b.shape[-1]).double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError("scores contain NaN or infinite values")
    return a, b, squeeze


def _out(v: torch.Tensor, squeeze: bool) -> torch.Tensor:
    return v[0] if squeeze else v


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve for telling OOD (positive) from in-distribution inputs.

    Equals the probability that a random OOD input scores higher than a random in-distribution
    input, ties counting one half (Mann-Whitney U / (n m)). 1 = perfect, 0.5 = chance.
    """
    a, b, squeeze = _as_rows(in_scores, out_scores)
    n, m = a.shape[1], b.shape[1]
    both = torch.cat([a, b], dim=1)
    srt, _ = both.sort(dim=1)
    left = torch.searchsorted(srt, b, side="left").double()
    right = torch.searchsorted(srt, b, side="right").double()
    ranks = (left + right + 1.0) / 2.0  # 1-based average ranks of the OOD scores
    u = ranks.sum(dim=1) - m * (m + 1) / 2.0
    return _out(u / (n * m), squeeze)


def _curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cumulative true/false positives at each position of the descending sort, and group ends."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    s = scores.gather(1, order)
    pos = positive.gather(1, order).double()
    tp = pos.cumsum(dim=1)
    fp = (1.0 - pos).cumsum(dim=1)
    end = torch.ones_like(s, dtype=torch.bool)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    return tp, fp, end


def _average_precision(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    tp, fp, end = _curve(scores, positive)
    total = tp[:, -1:]
    ends_tp = torch.where(end, tp, torch.zeros_like(tp))
    prev_end_tp = torch.zeros_like(tp)
    prev_end_tp[:, 1:] = ends_tp.cummax(dim=1).values[:, :-1]
    precision = tp / (tp + fp)
    delta = torch.where(end, tp - prev_end_tp, torch.zeros_like(tp))
    return (delta * precision).sum(dim=1) / total[:, 0]


def _stack(a: torch.Tensor, b: torch.Tensor, b_positive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([a, b], dim=1)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    if b_positive:
        positive[:, a.shape[1] :] = True
    else:
        positive[:, : a.shape[1]] = True
    return scores, positive


def aupr_out(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """Average precision with OOD inputs as positives, ranked by anomaly score.

    The step-wise estimator (sum over thresholds of recall increase x precision), as in
    scikit-learn's ``average_precision_score``; not a trapezoid over the PR curve.
    """
    a, b, squeeze = _as_rows(in_scores, out_scores)
    return _out(_average_precision(*_stack(a, b, b_positive=True)), squeeze)


def aupr_in(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """Average precision with in-distribution inputs as positives, ranked by ``-score``."""
    a, b, squeeze = _as_rows(in_scores, out_scores)
    return _out(_average_precision(*_stack(-a, -b, b_positive=False)), squeeze)


FPR_CONVENTIONS = ("in", "ood")
"""Which inputs are the positives of :func:`fpr_at_tpr`: ``"in"`` (in-distribution) or ``"ood"``."""


def fpr_at_tpr(
    in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95, positive: str = "in"
) -> torch.Tensor:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``. Lower is better.

    Two conventions are in use and they give different numbers on the same scores (on the embedded
    letters set with Energy, 0.706 with ``"in"`` and 0.575 with ``"ood"``), so a figure compared with
    a published table must use that table's one:

    * ``positive="in"`` (the default): in-distribution inputs are the positives, ranked by
      ``-score`` (most normal first); the threshold keeps ``tpr`` of the in-distribution inputs and
      the result is the share of OOD inputs accepted. This is ODIN's (Liang et al., "Enhancing the
      Reliability of Out-of-distribution Image Detection in Neural Networks", ICLR 2018), Hendrycks &
      Gimpel's baseline and OpenOOD v1.0's convention.
    * ``positive="ood"``: OOD inputs are the positives, ranked by score; the threshold catches
      ``tpr`` of the OOD inputs and the result is the share of in-distribution inputs flagged.
      This is OpenOOD v1.5's (Zhang et al., "OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution
      Detection", 2023: ``roc_curve(ood_indicator, -conf)``) and pytorch-ood's convention.

    In both, tied scores form one threshold, as in scikit-learn's ``roc_curve``: the result is
    ``fpr[argmax(tpr_curve >= tpr)]`` of the curve with the chosen positives (OpenOOD's threshold
    rule, in v1.0 and v1.5). The papers above name only which inputs are positive; their own code
    picks the threshold otherwise: ODIN's averages the FPR over a fine grid of thresholds whose TPR
    lies within 0.0005 of 95%, and Hendrycks et al.'s (Outlier Exposure, 2019) takes the point whose
    TPR is *closest* to 95%, which may lie below it. Both can differ from this one by about one
    input's step of the curve.
    """
    if not 0.0 < tpr <= 1.0:
        raise InputError(f"tpr must be in (0, 1], got {tpr}")
    if positive not in FPR_CONVENTIONS:
        raise InputError(f"positive must be 'in' (in-distribution) or 'ood', got {positive!r}")
    a, b, squeeze = _as_rows(in_scores, out_scores)
    if positive == "in":
        scores, is_positive = _stack(-a, -b, b_positive=False)
        n_pos, n_neg = a.shape[1], b.shape[1]
    else:
        scores, is_positive = _stack(a, b, b_positive=True)
        n_pos, n_neg = b.shape[1], a.shape[1]
    tp, fp, end = _curve(scores, is_positive)
    hit = end & (tp / n_pos >= tpr - 1e-12)
    idx = hit.double().argmax(dim=1, keepdim=True)
    return _out(fp.gather(1, idx)[:, 0] / n_neg, squeeze)


def fpr95_id_positive(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """FPR@95 with in-distribution inputs as positives: the share of OOD inputs accepted at the
    threshold that keeps 95% of in-distribution inputs (ODIN / OpenOOD v1.0); see :func:`fpr_at_tpr`."""
    return fpr_at_tpr(in_scores, out_scores, 0.95, positive="in")


def fpr95_ood_positive(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """FPR@95 with OOD inputs as positives: the share of in-distribution inputs flagged at the
    threshold that catches 95% of OOD inputs (OpenOOD v1.5, pytorch-ood); see :func:`fpr_at_tpr`."""
    return fpr_at_tpr(in_scores, out_scores, 0.95, positive="ood")


def fpr_at_95_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor) -> torch.Tensor:
    """The former name of :func:`fpr95_id_positive` (in-distribution = positive), kept for existing code."""
    return fpr95_id_positive(in_scores, out_scores)
