"""Learning to reject meets OOD detection: every detector on both tasks, side by side.

A monitor that rejects inputs serves two purposes that reward different scores. Rejecting the
model's *mistakes* on in-distribution inputs (selective classification) is measured by the area under
the risk-coverage curve, AURC (Geifman et al., "Bias-Reduced Uncertainty Estimation for Deep Neural
Classifiers", ICLR 2019), and its generalized form AUGRC (Traub et al., "Overcoming Common Flaws in the
Evaluation of Selective Classification Systems", NeurIPS 2024); the softmax response (MSP) is the
Bayes-optimal confidence for that task when the model's probabilities are calibrated (Chow's rule;
Franc et al., "Optimal strategies for reject option classifiers", JMLR 2023). Rejecting *OOD* inputs is
measured by AUROC and FPR@95 (:func:`mlsafety.metrics.ood_metrics`), where MSP is not optimal.

When both kinds arrive, a user needs one number per monitor for the mix expected. The **combined risk**
used here (and by the defence-in-depth monitor selection, :func:`mlsafety.systemic.validation_escape`,
which is this rule at ``ood_share = 0.5`` on its validation data and synthetic outliers):

* threshold: the detector flags ``score > t`` with ``t`` set so that at most ``false_alarm_rate`` of
  the *correctly classified* in-distribution inputs are flagged (``t`` is the ``(k+1)``-th largest of
  their scores, ``k = floor(false_alarm_rate * n_correct)``; ties at ``t`` are accepted);
* risk: ``(1 - pi) * P_ID(accepted and wrong) + pi * P_OOD(accepted)``, the share of all arriving
  inputs that are answered and should not have been (a wrong answer, or any answer to an OOD input),
  for an OOD share ``pi``.

Intervals: AURC / AUGRC by the seeded weighted bootstrap of :func:`~mlsafety.monitoring.selective.evaluate_selective`,
AUROC / FPR@95 by :func:`~mlsafety.metrics.ood_metrics`, the combined risk by a seeded two-sample percentile
bootstrap (ID and OOD inputs resampled independently, the threshold re-set in each resample).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mlsafety.core import Hazard, InputError, ModelLike, as_classifier, derive_seed
from mlsafety.metrics import Estimate, bootstrap_two_sample, ood_metrics
from mlsafety.monitoring.ood.base import Detector
from mlsafety.monitoring.ood.engine import FitData, collect_outputs
from mlsafety.monitoring.ood.evaluation import ScoreCache
from mlsafety.monitoring.selective import evaluate_selective

OOD_COLUMNS = ("auroc", "fpr95", "combined_risk")
"""The per-OOD-set columns of a :class:`RejectRow`."""


def _check_rates(ood_share: float, false_alarm_rate: float) -> None:
    if not 0.0 <= ood_share <= 1.0:
        raise InputError(f"ood_share must lie in [0, 1], got {ood_share}")
    if not 0.0 <= false_alarm_rate < 1.0:
        raise InputError(f"false_alarm_rate must lie in [0, 1), got {false_alarm_rate}")


def _combined_rows(
    id_scores: torch.Tensor, wrong: torch.Tensor, ood_scores: torch.Tensor, ood_share: float, false_alarm_rate: float
) -> torch.Tensor:
    """Combined risk of each row: ``id_scores``/``wrong`` (B, N), ``ood_scores`` (B, M) -> (B,)."""
    correct = ~wrong
    n_correct = correct.sum(dim=1)
    k = torch.floor(false_alarm_rate * n_correct.double() + 1e-9).long()
    ranked = torch.where(correct, id_scores, torch.full_like(id_scores, -math.inf)).sort(dim=1, descending=True).values
    t = ranked.gather(1, k.clamp_max(id_scores.shape[1] - 1)[:, None])  # (B, 1); -inf when no correct input
    id_escaped = ((id_scores <= t) & wrong).double().mean(dim=1)
    ood_escaped = (ood_scores <= t).double().mean(dim=1)
    return (1.0 - ood_share) * id_escaped + ood_share * ood_escaped


def combined_risk(
    id_scores: torch.Tensor,
    id_correct: torch.Tensor,
    ood_scores: torch.Tensor,
    ood_share: float = 0.5,
    false_alarm_rate: float = 0.05,
) -> float:
    """The combined risk of a detector when a share ``ood_share`` of the arriving inputs is OOD (see the
    module's docstring for the threshold rule); lower is better.

    Args:
        id_scores: (N,) anomaly scores of in-distribution inputs (higher = more anomalous).
        id_correct: (N,) whether the model answers each in-distribution input correctly.
        ood_scores: (M,) anomaly scores of OOD inputs.
        ood_share: the share ``pi`` of OOD inputs in the mix, in [0, 1].
        false_alarm_rate: the share of correctly answered in-distribution inputs the monitor may flag.
    """
    _check_rates(ood_share, false_alarm_rate)
    s, ok, o = _prepare(id_scores, id_correct, ood_scores)
    return float(_combined_rows(s[None], ~ok[None], o[None], ood_share, false_alarm_rate)[0])


def _prepare(
    id_scores: torch.Tensor, id_correct: torch.Tensor, ood_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(id_scores).detach().double().reshape(-1).cpu()
    ok = torch.as_tensor(id_correct).detach().reshape(-1).bool().cpu()
    o = torch.as_tensor(ood_scores).detach().double().reshape(-1).cpu()
    if s.shape != ok.shape or s.numel() == 0 or o.numel() == 0:
        raise InputError(
            "combined risk needs (N,) in-distribution scores and correctness, N > 0, and (M,) OOD scores, M > 0"
        )
    if not (torch.isfinite(s).all() and torch.isfinite(o).all()):
        raise InputError("scores contain NaN or infinite values")
    return s, ok, o


def combined_risk_estimate(
    id_scores: torch.Tensor,
    id_correct: torch.Tensor,
    ood_scores: torch.Tensor,
    ood_share: float = 0.5,
    false_alarm_rate: float = 0.05,
    n_boot: int = 500,
    seed: int = 0,
) -> Estimate:
    """:func:`combined_risk` with a seeded two-sample percentile-bootstrap 95% interval (in-distribution
    and OOD inputs resampled independently; the threshold is re-set in every resample)."""
    _check_rates(ood_share, false_alarm_rate)
    s, ok, o = _prepare(id_scores, id_correct, ood_scores)
    wrong = ~ok

    def metric(idx: torch.Tensor, ood: torch.Tensor) -> torch.Tensor:
        rows = idx.reshape(-1, idx.shape[-1]).long()
        out = _combined_rows(s[rows], wrong[rows], ood.reshape(-1, ood.shape[-1]), ood_share, false_alarm_rate)
        return out if idx.ndim == 2 else out[0]

    index = torch.arange(s.numel(), dtype=torch.float64)
    return bootstrap_two_sample(metric, index, o, n_boot, seed)


@dataclass(frozen=True)
class RejectRow:
    """One detector on both tasks.

    Attributes:
        detector: the detector's key.
        aurc: misclassification-rejection AURC on in-distribution inputs (lower is better).
        augrc: AUGRC on the same inputs (lower is better).
        ood: per OOD set, ``auroc`` (higher is better), ``fpr95`` (ID-positive: the share of OOD inputs
            accepted at the threshold keeping 95% of in-distribution inputs; lower is better) and
            ``combined_risk`` (lower is better).
    """

    detector: str
    aurc: Estimate
    augrc: Estimate
    ood: dict[str, dict[str, Estimate]] = field(default_factory=dict)


@dataclass(frozen=True)
class RejectTable:
    """:func:`reject_table`'s result: one :class:`RejectRow` per detector and the rule behind the combined risk.

    Attributes:
        rows: by detector, in the order given.
        ood_share: the OOD share ``pi`` of the combined risk.
        false_alarm_rate: the share of correct in-distribution answers each threshold may flag.
        accuracy: the model's accuracy on the in-distribution inputs.
        skipped: detectors left out, with the reason.
    """

    rows: list[RejectRow]
    ood_share: float
    false_alarm_rate: float
    accuracy: float
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ood_sets(self) -> list[str]:
        """The OOD sets' names, in the order given."""
        return list(self.rows[0].ood) if self.rows else []

    def row(self, detector: str) -> RejectRow:
        """The row of ``detector``."""
        for r in self.rows:
            if r.detector == detector:
                return r
        raise InputError(f"no row for detector {detector!r}; rows: {', '.join(r.detector for r in self.rows)}")

    def value(self, detector: str, metric: str, ood_set: str | None = None) -> float:
        """A cell's value: ``aurc`` / ``augrc``, or one of :data:`OOD_COLUMNS` (``ood_set`` None: mean over sets)."""
        r = self.row(detector)
        if metric in ("aurc", "augrc"):
            return float(getattr(r, metric).value)
        if metric not in OOD_COLUMNS:
            raise InputError(f"unknown metric {metric!r}; use aurc, augrc, {', '.join(OOD_COLUMNS)}")
        sets = [ood_set] if ood_set is not None else list(r.ood)
        return sum(r.ood[s][metric].value for s in sets) / len(sets)

    def best(self, metric: str = "combined_risk", ood_set: str | None = None) -> str:
        """The detector with the best value of ``metric`` (highest AUROC, lowest of the rest; ties: the
        earlier row); for an OOD column with ``ood_set`` None, by the mean over the OOD sets."""
        if not self.rows:
            raise InputError("the table has no rows")
        sign = -1.0 if metric == "auroc" else 1.0
        return min(self.rows, key=lambda r: sign * self.value(r.detector, metric, ood_set)).detector

    def markdown(self, digits: int = 3) -> str:
        """The table as Markdown: value [low, high] per cell."""

        def cell(e: Estimate) -> str:
            return f"{e.value:.{digits}f} [{e.ci_low:.{digits}f}, {e.ci_high:.{digits}f}]"

        head = ["detector", "AURC", "AUGRC"]
        for s in self.ood_sets:
            head += [f"{s} AUROC", f"{s} FPR@95", f"{s} combined risk"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.detector, cell(r.aurc), cell(r.augrc)]
            for s in self.ood_sets:
                cells += [cell(r.ood[s][m]) for m in OOD_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        for name, why in self.skipped.items():
            lines.append(f"| {name} | skipped: {why} |" + " |" * (len(head) - 2))
        return "\n".join(lines)


def reject_table(
    id_scores: Mapping[str, torch.Tensor],
    id_correct: torch.Tensor,
    ood_scores: Mapping[str, Mapping[str, torch.Tensor]],
    ood_share: float = 0.5,
    false_alarm_rate: float = 0.05,
    n_boot: int = 500,
    seed: int = 0,
    skipped: Mapping[str, str] | None = None,
) -> RejectTable:
    """Every detector's misclassification-rejection and OOD-detection figures, with 95% intervals.

    Args:
        id_scores: anomaly scores (N,) of held-out in-distribution inputs, by detector.
        id_correct: (N,) whether the model answers each of those inputs correctly.
        ood_scores: per OOD set, anomaly scores (M_set,) by detector (every detector of ``id_scores``).
        ood_share: the OOD share ``pi`` of the combined risk.
        false_alarm_rate: share of correct in-distribution answers the combined risk's threshold may flag.
        n_boot: bootstrap resamples per interval.
        seed: the run seed (each cell draws from a seed derived from it, the detector and the set).
        skipped: detectors left out, with the reason (kept in the table).
    """
    _check_rates(ood_share, false_alarm_rate)
    correct = torch.as_tensor(id_correct).reshape(-1).bool().cpu()
    rows = []
    for name, s in id_scores.items():
        s = s.detach().double().reshape(-1).cpu()
        sel = evaluate_selective(-s, correct, n_boot=n_boot, seed=seed, stream=("reject", name))
        per_set: dict[str, dict[str, Estimate]] = {}
        for set_name, by_det in ood_scores.items():
            if name not in by_det:
                raise InputError(f"no scores of detector {name!r} on OOD set {set_name!r}")
            o = by_det[name].detach().double().reshape(-1).cpu()
            m = ood_metrics(s, o, n_boot, derive_seed(seed, "reject", set_name, name))
            risk = combined_risk_estimate(
                s, correct, o, ood_share, false_alarm_rate, n_boot, derive_seed(seed, "reject-risk", set_name, name)
            )
            per_set[set_name] = {"auroc": m["auroc"], "fpr95": m["fpr95_id_positive"], "combined_risk": risk}
        rows.append(RejectRow(name, sel.metrics["aurc"], sel.metrics["augrc"], per_set))
    acc = float(correct.double().mean()) if correct.numel() else float("nan")
    return RejectTable(rows, ood_share, false_alarm_rate, acc, dict(skipped or {}))


def evaluate_reject(
    detectors: Sequence[str | Detector],
    model: ModelLike,
    fit_data: FitData,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ood_sets: Mapping[str, torch.Tensor],
    ood_share: float = 0.5,
    false_alarm_rate: float = 0.05,
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> RejectTable:
    """Fit ``detectors`` on ``fit_data``, score the labelled in-distribution test set and each OOD set (one
    shared forward pass per set for the detectors that need only logits and features), and build
    :func:`reject_table`. Correctness is the model's top-1 answer against ``test_y``."""
    clf = as_classifier(model)
    y = torch.as_tensor(test_y).reshape(-1).long()
    if y.shape[0] != test_x.shape[0] or bool((y < 0).any()):
        raise InputError("test_y must hold one class label (>= 0) per test input")
    cache = ScoreCache(clf, fit_data, detectors, batch_size=batch_size)
    outputs, _ = collect_outputs(clf, test_x, batch_size)  # one pass: correctness and the shared detectors
    correct = outputs.logits.argmax(dim=1).cpu() == y
    in_scores = cache.scores("in-distribution", test_x, outputs)
    out = {name: cache.scores(str(Hazard.ood(name)), x) for name, x in ood_sets.items()}
    return reject_table(in_scores, correct, out, ood_share, false_alarm_rate, n_boot, seed)
