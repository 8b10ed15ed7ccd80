"""Hyper-parameter tuning of detectors without touching OOD test data.

Outliers for tuning are synthesised from in-distribution validation inputs (pixel permutations,
heavy noise, quadrant mosaics: :func:`mlsafety.core.permute_noise_mosaic_outliers`), so the choice
never sees the OOD sets it is evaluated on. Tuning on real OOD data is possible only with
``use_ood_data=True``, and the result says so (``Tuned.tuned_on == "ood"``), so reports can mark it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlsafety.core import InputError, ModelLike, as_classifier, permute_noise_mosaic_outliers
from mlsafety.metrics import auroc
from mlsafety.monitoring.ood.base import DETECTORS, Detector, FitData, collect_inputs


@dataclass(frozen=True)
class Tuned:
    """The outcome of :func:`tune`: the fitted detector with the best parameters.

    Attributes:
        detector: fitted with ``params``.
        params: the chosen hyper-parameters.
        auroc: AUROC of the chosen detector (validation inputs vs. the tuning outliers).
        tuned_on: ``"synthetic"`` (outliers made from validation data) or ``"ood"`` (real OOD data,
            only when explicitly asked for).
        grid: every tried parameter set with its AUROC.
    """

    detector: Detector
    params: dict[str, Any]
    auroc: float
    tuned_on: str
    grid: list[tuple[dict[str, Any], float]]


def tune(
    name: str,
    grid: Mapping[str, Sequence[Any]],
    model: ModelLike,
    fit_data: FitData,
    val_x: torch.Tensor,
    generator: torch.Generator,
    ood_data: torch.Tensor | None = None,
    use_ood_data: bool = False,
) -> Tuned:
    """Pick the detector's hyper-parameters from ``grid`` by AUROC of validation inputs against
    outliers, never against the OOD test sets unless asked.

    Args:
        name: detector registry name.
        grid: values to try per hyper-parameter, e.g. ``{"percentile": [80, 90, 95]}``.
        model: the classifier.
        fit_data: in-distribution data the detector is fitted on.
        val_x: held-out in-distribution inputs (not in ``fit_data``; the fit data itself is refused).
        generator: draws the synthetic outliers (:func:`~mlsafety.core.permute_noise_mosaic_outliers`).
        ood_data: real OOD inputs to tune on instead (requires ``use_ood_data=True``).
        use_ood_data: explicit consent to tune on real OOD data; the result is marked ``"ood"``.
    """
    if ood_data is not None and not use_ood_data:
        raise InputError("tuning on real OOD data must be asked for explicitly: pass use_ood_data=True")
    if use_ood_data and ood_data is None:
        raise InputError("use_ood_data=True needs ood_data")
    if not grid:
        raise InputError("give at least one hyper-parameter with values to try")
    clf = as_classifier(model)
    fit_x, fit_y = collect_inputs(fit_data)
    if isinstance(val_x, torch.Tensor) and val_x.shape == fit_x.shape and torch.equal(val_x.to(fit_x.device), fit_x):
        raise InputError(
            "tuning needs validation inputs held out from the fit data, but val_x is the fit data itself (the choice "
            "would be made on in-sample scores: e.g. KNN's k=1 finds every input itself); fit on other data"
        )
    outliers = ood_data if ood_data is not None else permute_noise_mosaic_outliers(val_x, generator)
    keys = sorted(grid)
    tried: list[tuple[dict[str, Any], float]] = []
    best: tuple[float, Detector, dict[str, Any]] | None = None
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        det = DETECTORS.create(name, **params)
        det.fit(clf, (fit_x, fit_y) if fit_y is not None else fit_x)
        a = float(auroc(det.score(clf, val_x), det.score(clf, outliers)))
        tried.append((params, a))
        if best is None or a > best[0]:
            best = (a, det, params)
    assert best is not None
    return Tuned(best[1], best[2], best[0], "ood" if use_ood_data else "synthetic", tried)
