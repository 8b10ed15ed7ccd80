"""Selective prediction: how much can the model answer, and how often is it wrong when it does?

A selective classifier answers when its confidence reaches a threshold and abstains otherwise.
Sweeping the threshold gives the risk-coverage curve. Points exist only where the confidence
changes (tied confidences are accepted or rejected together), so ties never create points a real
threshold could not reach.

* AURC (Geifman et al., "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers", 2019):
  the step-wise area under the curve, ``sum_g (cov_g - cov_{g-1}) risk_g``; without ties it is the
  usual mean over ``n`` of the risk of the ``n`` most confident predictions.
* E-AURC: AURC minus the AURC of an oracle that ranks every correct prediction first.
* AUGRC (Traub et al., "Overcoming Common Flaws in the Evaluation of Selective Classification
  Systems", 2024): the area under the generalized risk, the share of all inputs that are accepted
  and wrong, from ``(0, 0)`` through the curve's points, linear between them (as the paper's code
  integrates it): ``sum_g (cov_g - cov_{g-1}) (grisk_{g-1} + grisk_g) / 2``. The generalized risk
  grows linearly while a tie group is admitted in random order, so this is the paper's identity
  ``AUGRC = (1 - AUROC_f) acc (1 - acc) + (1 - acc)^2 / 2`` exactly, ties counted half in
  ``AUROC_f`` (tested); a step-wise sum would add ``sum_g size_g errors_g / (2 n^2)``, double the
  value when every confidence is tied.

Every function takes ``confidence`` (N,) (higher = more trusted; use ``-score`` for an anomaly
score) and ``correct`` (N,) booleans, or 2-D batches of rows. :class:`SelectiveStats` gives the
same metrics for integer weights over the inputs (bootstrap counts) from one sort, in O(B x N)
memory, without resampled copies. :func:`evaluate_selective` gives the curve and every metric with
its seeded bootstrap 95% interval, as the audit stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, derive_seed
from mlsafety.metrics import Estimate, bootstrap_weighted

METRICS = ("aurc", "eaurc", "augrc", "risk_at_coverage", "coverage_at_risk")
"""The selective metrics :func:`evaluate_selective` estimates, in order."""


def _rows(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    c = torch.as_tensor(confidence)
    ok = torch.as_tensor(correct).to(c.device)
    if c.shape != ok.shape or c.ndim not in (1, 2) or c.shape[-1] == 0:
        raise InputError("confidence and correct must have the same shape (N,) or (B, N), with N > 0")
    if not torch.isfinite(c).all():
        raise InputError("confidence contains NaN or infinite values")
    squeeze = c.ndim == 1
    return c.reshape(-1, c.shape[-1]).double(), ok.reshape(-1, ok.shape[-1]).double(), squeeze


def _sweep(c: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted confidences, cumulative errors, accepted counts and group-end mask, per row."""
    order = c.argsort(dim=1, descending=True, stable=True)
    s = c.gather(1, order)
    errors = (1.0 - ok.gather(1, order)).cumsum(dim=1)
    accepted = torch.arange(1, c.shape[1] + 1, dtype=c.dtype, device=c.device).expand_as(c)
    end = torch.ones_like(s, dtype=torch.bool)
    end[:, :-1] = s[:, :-1] != s[:, 1:]
    return s, errors, accepted, end


def _at_group_end(values: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Each position's value taken at the end of its tie group."""
    n = values.shape[1]
    pos = torch.arange(n, device=values.device).expand_as(values)
    ends = torch.where(end, pos, torch.full_like(pos, n - 1))
    group_end = ends.flip(1).cummin(dim=1).values.flip(1)
    return values.gather(1, group_end)


def _at_group_start(values: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Each position's value taken at the start of its tie group."""
    pos = torch.arange(values.shape[1], device=values.device).expand_as(values)
    start = torch.ones_like(end)
    start[:, 1:] = end[:, :-1]
    group_start = torch.where(start, pos, torch.zeros_like(pos)).cummax(dim=1).values
    return values.gather(1, group_start)


def _out(v: torch.Tensor, squeeze: bool) -> torch.Tensor:
    return v[0] if squeeze else v


@dataclass(frozen=True)
class RiskCoverage:
    """Tie-aware risk-coverage curve, from the most confident threshold to full coverage.

    Attributes:
        threshold: confidence threshold of each point (accept ``confidence >= threshold``).
        coverage: share of inputs accepted.
        risk: error rate among accepted inputs (selective risk).
        generalized_risk: accepted-and-wrong inputs over all inputs.
    """

    threshold: torch.Tensor
    coverage: torch.Tensor
    risk: torch.Tensor
    generalized_risk: torch.Tensor


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
    """The risk-coverage curve of 1-D ``confidence`` and ``correct``, one point per distinct confidence."""
    c, ok, squeeze = _rows(confidence, correct)
    if not squeeze:
        raise InputError("risk_coverage takes 1-D inputs")
    s, errors, accepted, end = _sweep(c, ok)
    n = c.shape[1]
    e = end[0]
    return RiskCoverage(s[0][e], accepted[0][e] / n, errors[0][e] / accepted[0][e], errors[0][e] / n)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Area under the risk-coverage curve (step-wise, tie-aware); lower is better."""
    c, ok, squeeze = _rows(confidence, correct)
    _, errors, accepted, end = _sweep(c, ok)
    return _out(_at_group_end(errors / accepted, end).mean(dim=1), squeeze)


def augrc(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Area under the generalized-risk-coverage curve (linear between the tie-aware points); lower is better."""
    c, ok, squeeze = _rows(confidence, correct)
    _, errors, _, end = _sweep(c, ok)
    before = torch.cat([torch.zeros_like(errors[:, :1]), errors[:, :-1]], dim=1)  # errors ahead of each input
    # each input spans 1/n of coverage, over which its tie group's trapezoid runs
    mid = (_at_group_start(before, end) + _at_group_end(errors, end)) / (2 * c.shape[1])
    return _out(mid.mean(dim=1), squeeze)


def eaurc(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Excess AURC: AURC minus the AURC of the best possible ranking, every correct prediction
    first and no ties, ``1/n sum_{k > n - e} (k - (n - e)) / k`` for ``e`` errors in ``n`` (>= 0)."""
    c, ok, squeeze = _rows(confidence, correct)
    n = c.shape[1]
    errors = (1.0 - ok).sum(dim=1, keepdim=True)
    k = torch.arange(1, n + 1, dtype=c.dtype, device=c.device)[None, :]
    oracle = ((k - (n - errors)).clamp_min(0) / k).mean(dim=1)
    return _out((aurc(c, ok) - oracle).clamp_min(0.0), squeeze)  # >= 0 up to rounding


def risk_at_coverage(confidence: torch.Tensor, correct: torch.Tensor, coverage: float = 0.9) -> torch.Tensor:
    """Selective risk at the first threshold whose coverage reaches ``coverage`` (in (0, 1])."""
    if not 0 < coverage <= 1:
        raise InputError(f"coverage must lie in (0, 1], got {coverage}")
    c, ok, squeeze = _rows(confidence, correct)
    _, errors, accepted, end = _sweep(c, ok)
    hit = end & (accepted / c.shape[1] >= coverage - 1e-12)
    idx = hit.double().argmax(dim=1, keepdim=True)
    return _out((errors / accepted).gather(1, idx)[:, 0], squeeze)


def coverage_at_risk(confidence: torch.Tensor, correct: torch.Tensor, risk: float = 0.05) -> torch.Tensor:
    """Largest coverage among thresholds whose selective risk is at most ``risk`` (0 if none)."""
    if not 0 <= risk <= 1:
        raise InputError(f"risk must lie in [0, 1], got {risk}")
    c, ok, squeeze = _rows(confidence, correct)
    _, errors, accepted, end = _sweep(c, ok)
    good = end & (errors / accepted <= risk + 1e-12)
    cov = torch.where(good, accepted / c.shape[1], torch.zeros_like(accepted))
    return _out(cov.amax(dim=1), squeeze)


class SelectiveStats:
    """The selective metrics of weighted versions of one set of predictions (bootstrap resamples).

    The inputs are sorted once by confidence (descending) and cut into tie groups. A resample that
    holds input ``i`` ``w_i`` times has the same tie groups, less those it holds no copy of, so its
    curve is made of cumulative weighted counts at the group ends: each metric of a row of weights
    equals the metric of the explicitly resampled data (tested), in O(B x N) memory.

    Args:
        confidence: (N,) higher = more trusted.
        correct: (N,) booleans or 0/1.
    """

    def __init__(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        c, ok, squeeze = _rows(confidence, correct)
        if not squeeze:
            raise InputError("SelectiveStats takes 1-D inputs")
        self.n = int(c.shape[1])
        self._order = c[0].argsort(descending=True, stable=True).cpu()
        s = c[0].cpu()[self._order]
        self._err = 1.0 - ok[0].cpu()[self._order]
        end = torch.ones(self.n, dtype=torch.bool)
        end[:-1] = s[:-1] != s[1:]
        self._ends = end.nonzero()[:, 0]

    def _curve(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accepted and wrong counts at each group end (B, G), group sizes (B, G), totals (B,)."""
        w = weights.double().cpu().reshape(-1, self.n)[:, self._order]
        errors = torch.mul(w, self._err).cumsum_(dim=1)[:, self._ends]
        accepted = w.cumsum_(dim=1)[:, self._ends]
        size = accepted.diff(dim=1, prepend=torch.zeros_like(accepted[:, :1]))
        return accepted, errors, size, accepted[:, -1]

    @staticmethod
    def _risk(errors: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        return errors / accepted.clamp_min(1e-300)

    def aurc(self, weights: torch.Tensor) -> torch.Tensor:
        """:func:`aurc` of each row of weights (B, N); returns (B,)."""
        a, e, size, total = self._curve(weights)
        return (size * self._risk(e, a)).sum(dim=1) / total

    def augrc(self, weights: torch.Tensor) -> torch.Tensor:
        """:func:`augrc` of each row of weights (B, N)."""
        _, e, size, total = self._curve(weights)
        before = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
        return (size * (before + e)).sum(dim=1) / (2 * total**2)

    def eaurc(self, weights: torch.Tensor) -> torch.Tensor:
        """:func:`eaurc` of each row of integer weights (B, N)."""
        a, e, size, total = self._curve(weights)
        n = total.round().long()
        wrong = e[:, -1].round().long()
        harmonic = torch.cat([torch.zeros(1, dtype=torch.float64),
                              (1.0 / torch.arange(1, int(n.max()) + 1, dtype=torch.float64)).cumsum(0)])  # fmt: skip
        # oracle: 1/n sum_{k > n - e} (k - (n - e)) / k = (e - (n - e)(H_n - H_{n-e})) / n
        oracle = (wrong - (n - wrong) * (harmonic[n] - harmonic[n - wrong])) / n
        aurc = (size * self._risk(e, a)).sum(dim=1) / total
        return (aurc - oracle).clamp_min(0.0)

    def risk_at_coverage(self, weights: torch.Tensor, coverage: float = 0.9) -> torch.Tensor:
        """:func:`risk_at_coverage` of each row of weights (B, N)."""
        if not 0 < coverage <= 1:
            raise InputError(f"coverage must lie in (0, 1], got {coverage}")
        a, e, size, total = self._curve(weights)
        hit = (size > 0) & (a / total[:, None] >= coverage - 1e-12)
        idx = hit.double().argmax(dim=1, keepdim=True)
        return self._risk(e, a).gather(1, idx)[:, 0]

    def coverage_at_risk(self, weights: torch.Tensor, risk: float = 0.05) -> torch.Tensor:
        """:func:`coverage_at_risk` of each row of weights (B, N)."""
        if not 0 <= risk <= 1:
            raise InputError(f"risk must lie in [0, 1], got {risk}")
        a, e, size, total = self._curve(weights)
        good = (size > 0) & (self._risk(e, a) <= risk + 1e-12)
        return torch.where(good, a / total[:, None], torch.zeros_like(a)).amax(dim=1)


@dataclass(frozen=True)
class SelectiveResult:
    """Risk-coverage analysis of one confidence source.

    Attributes:
        curve: the tie-aware risk-coverage curve.
        metrics: each of :data:`METRICS` with its seeded bootstrap 95% interval.
        coverage: the target coverage of ``risk_at_coverage``.
        risk: the target risk of ``coverage_at_risk``.
    """

    curve: RiskCoverage
    metrics: dict[str, Estimate]
    coverage: float
    risk: float

    def params(self, metric: str) -> dict[str, float]:
        """The target ``metric`` is read at (``{"coverage": ...}`` or ``{"risk": ...}``), else empty."""
        targets = {"risk_at_coverage": {"coverage": self.coverage}, "coverage_at_risk": {"risk": self.risk}}
        return targets.get(metric, {})


def evaluate_selective(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    coverage: float = 0.9,
    risk: float = 0.05,
    n_boot: int = 500,
    seed: int = 0,
    stream: Sequence[object] = (),
) -> SelectiveResult:
    """The risk-coverage curve and every selective metric with a seeded bootstrap 95% interval.

    Point values come from the direct functions (:func:`aurc` ...); resamples are rows of
    multinomial counts evaluated on one sorted order (:class:`SelectiveStats`), so no resampled copy
    is formed. Metric ``m`` draws from ``derive_seed(seed, *stream, m)``.

    Args:
        confidence: (N,) higher = more trusted (``-score`` for an anomaly score).
        correct: (N,) booleans or 0/1.
        coverage: target coverage of ``risk_at_coverage``, in (0, 1].
        risk: target selective risk of ``coverage_at_risk``, in [0, 1].
        n_boot: bootstrap resamples per interval.
        seed: the run seed.
        stream: names that make this evaluation's seeds its own (the audit passes its check and
            the confidence source).
    """
    stats = SelectiveStats(confidence, correct)
    direct: dict[str, Callable[[], torch.Tensor]] = {
        "aurc": lambda: aurc(confidence, correct),
        "eaurc": lambda: eaurc(confidence, correct),
        "augrc": lambda: augrc(confidence, correct),
        "risk_at_coverage": lambda: risk_at_coverage(confidence, correct, coverage),
        "coverage_at_risk": lambda: coverage_at_risk(confidence, correct, risk),
    }
    weighted: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "aurc": stats.aurc,
        "eaurc": stats.eaurc,
        "augrc": stats.augrc,
        "risk_at_coverage": lambda w: stats.risk_at_coverage(w, coverage),
        "coverage_at_risk": lambda w: stats.coverage_at_risk(w, risk),
    }
    curve = risk_coverage(confidence, correct)
    metrics: dict[str, Estimate] = {}
    for m in METRICS:
        value, m_seed = float(direct[m]()), derive_seed(seed, *stream, m)
        metrics[m] = bootstrap_weighted(weighted[m], stats.n, n_boot, m_seed, name=m, value=value)
    return SelectiveResult(curve, metrics, coverage, risk)


__all__ = [
    "METRICS",
    "RiskCoverage",
    "SelectiveResult",
    "SelectiveStats",
    "augrc",
    "aurc",
    "coverage_at_risk",
    "eaurc",
    "evaluate_selective",
    "risk_at_coverage",
    "risk_coverage",
]
