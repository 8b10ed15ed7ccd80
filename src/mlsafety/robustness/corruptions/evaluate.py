"""Corruption robustness with intervals from per-input correctness (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019).

:func:`mce` in this package gives the published point values from error rates; here the same
quantities come with 95% intervals, from which inputs a model got right:

* :func:`estimate_corruption`: one corruption's accuracy and error at each severity (exact
  Clopper-Pearson over the N inputs) and its corruption error CE, the mean error over severities,
  with a bootstrap over inputs (each input with all its severities: the N x S outcomes share inputs,
  so they are not N x S independent trials);
* :func:`estimate_mce`: the mean accuracy over every (corruption, severity) cell, mCE and relative
  mCE (CE minus the clean error), unnormalised (the form for models other than ImageNet's) or
  divided by a baseline's errors (AlexNet's published ImageNet-C errors, constants without an
  interval: the interval covers the audited model's sampling error only), each by the same input
  bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, derive_seed
from mlsafety.metrics import Estimate, bootstrap_mean, bootstrap_statistic, proportion
from mlsafety.robustness.corruptions._metrics import ALEXNET_CLEAN_ERROR, check_baseline

__all__ = ["CorruptionEstimates", "MCEEstimates", "Seed", "estimate_corruption", "estimate_mce"]

Seed = int | Callable[[str], int]
"""A bootstrap seed, or the seed of each statistic by its label (see :func:`estimate_mce`)."""


@dataclass(frozen=True)
class CorruptionEstimates:
    """One corruption at several severities (:func:`estimate_corruption`).

    Attributes:
        accuracy: severity -> top-1 accuracy (exact 95% interval).
        error: severity -> top-1 error, ``1 - accuracy`` (exact 95% interval).
        ce: the unnormalised corruption error, each input's error averaged over the severities and
            then over inputs (bootstrap interval over inputs); None when not asked for.
    """

    accuracy: dict[int, Estimate]
    error: dict[int, Estimate]
    ce: Estimate | None


@dataclass(frozen=True)
class MCEEstimates:
    """Summaries over corruptions (:func:`estimate_mce`); every interval is a bootstrap over inputs.

    Attributes:
        mean_accuracy: accuracy averaged over every (corruption, severity) cell.
        mce: mean corruption error: unnormalised (mean error) or, with a baseline, the mean of each
            corruption's CE divided by the baseline's.
        relative_mce: ``mce``'s counterpart on errors minus the clean error.
        mce_unnormalised, relative_mce_unnormalised: the unnormalised forms (equal to ``mce`` and
            ``relative_mce`` without a baseline).
        normalised: whether ``mce`` and ``relative_mce`` are divided by a baseline.
        normalised_names: the corruptions in the normalised forms (those the baseline has); all of
            them without a baseline.
        accuracy_grid: (C, S) float64 accuracy of each cell (for a heat map).
        clean_accuracy: the clean accuracy (point value).
    """

    mean_accuracy: Estimate
    mce: Estimate
    relative_mce: Estimate
    mce_unnormalised: Estimate
    relative_mce_unnormalised: Estimate
    normalised: bool
    normalised_names: tuple[str, ...]
    accuracy_grid: torch.Tensor
    clean_accuracy: float


def estimate_corruption(
    correct: Mapping[int, torch.Tensor], *, ce: bool = True, n_boot: int = 500, seed: int = 0, name: str = "ce"
) -> CorruptionEstimates:
    """Accuracy and error per severity and the corruption error CE of one corruption.

    Args:
        correct: severity -> (N,) bool, which inputs the model classifies correctly under the
            corruption at that severity (the same N inputs at every severity).
        ce: also estimate CE (leave it out when some severity is missing, so CEs stay comparable).
        n_boot, seed, name: CE's bootstrap (``name`` labels its stream, see
            :func:`~mlsafety.metrics.bootstrap_mean`).
    """
    if not correct:
        raise InputError("estimate_corruption needs the correctness of at least one severity")
    accuracy = {int(s): proportion(c) for s, c in correct.items()}
    error = {int(s): proportion(~c) for s, c in correct.items()}
    est = None
    if ce:
        wrong = torch.stack([~c for c in correct.values()], dim=1)  # (N, S)
        per_input = wrong.double().mean(dim=1)  # each input's error over severities
        est = bootstrap_mean(per_input, n_boot=n_boot, seed=seed, name=name)
    return CorruptionEstimates(accuracy, error, est)


def estimate_mce(
    clean_correct: torch.Tensor,
    correct: torch.Tensor,
    names: Sequence[str],
    *,
    baseline: Mapping[str, float] | None = None,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
    n_boot: int = 500,
    seed: Seed = 0,
) -> MCEEstimates:
    """Mean accuracy, mCE and relative mCE over corruptions, with bootstrap intervals over inputs.

    Every statistic is a function of each input's clean error and its error averaged over the
    severities of each corruption, so the bootstrap resamples those (N, 1 + C) per-input values.

    Args:
        clean_correct: (N,) bool, correct on the clean inputs.
        correct: (N, C, S) bool, correct under corruption ``c`` at severity ``s``.
        names: the C corruption names, in ``correct``'s order.
        baseline: corruption -> the baseline's error (e.g. ``ALEXNET_ERRORS``) for the normalised
            forms; corruptions it lacks are left out of them. None: unnormalised only.
        baseline_clean_error: the baseline's clean error (relative mCE).
        n_boot: bootstrap resamples.
        seed: the seed of every statistic's bootstrap, or a function from a statistic's label
            (``acc``, ``mce-raw``, ``rmce-raw``, ``mce``, ``rmce``) to its seed; an integer
            gives ``derive_seed(seed, label)``.

    Raises:
        InputError: shapes that disagree; a baseline with none of ``names``, an error outside (0, 1] or
            not above ``baseline_clean_error`` (the normalised forms divide by them).
    """
    if correct.dim() != 3 or correct.shape[1] != len(names) or clean_correct.shape != correct.shape[:1]:
        raise InputError(
            f"correct must be (N, C, S) with C = {len(names)} names and clean_correct (N,), got "
            f"{tuple(correct.shape)} and {tuple(clean_correct.shape)}"
        )
    seed_of = seed if callable(seed) else (lambda label: derive_seed(seed, label))
    c, s = correct.shape[1], correct.shape[2]
    cell_err = (~correct).double().reshape(-1, c, s)
    wrong = torch.cat([(~clean_correct).double()[:, None], cell_err.mean(dim=2)], dim=1)

    def stat(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], label: str) -> Estimate:
        def statistic(v: torch.Tensor) -> torch.Tensor:
            rates = v.mean(dim=-2)  # (B, 1 + C): clean error, then CE of each corruption
            return fn(rates[:, 0], rates[:, 1:])

        return bootstrap_statistic(statistic, wrong, n_boot=n_boot, seed=seed_of(label), name=f"corruptions-{label}")

    mean_acc = stat(lambda e0, e: 1 - e.mean(dim=1), "acc")
    raw_mce = stat(lambda e0, e: e.mean(dim=1), "mce-raw")
    raw_rel = stat(lambda e0, e: e.mean(dim=1) - e0, "rmce-raw")
    mce, rel, kept = raw_mce, raw_rel, tuple(names)
    if baseline is not None:
        keep = [i for i, n in enumerate(names) if n in baseline]
        if not keep:
            raise InputError("none of the audited corruptions has a baseline error; audit the ImageNet-C ones")
        check_baseline({names[i]: baseline[names[i]] for i in keep}, baseline_clean_error)
        ref = torch.tensor([baseline[names[i]] for i in keep], dtype=torch.float64)
        idx = torch.tensor(keep)
        mce = stat(lambda e0, e: (e[:, idx] / ref).mean(dim=1), "mce")
        rel = stat(lambda e0, e: ((e[:, idx] - e0[:, None]) / (ref - baseline_clean_error)).mean(dim=1), "rmce")
        kept = tuple(names[i] for i in keep)
    grid = 1 - cell_err.mean(dim=0)
    clean_acc = 1 - float(wrong[:, 0].mean())
    return MCEEstimates(mean_acc, mce, rel, raw_mce, raw_rel, baseline is not None, kept, grid, clean_acc)
