"""Hyper-parameter tuning of detectors without touching OOD test data.

Outliers for tuning are synthesised from in-distribution validation inputs (pixel permutations,
heavy noise, quadrant mosaics), so the choice never sees the OOD sets it is evaluated on. Tuning
on real OOD data is possible only with ``use_ood_data=True``, and the result says so
(``Tuned.tuned_on == "ood"``), so reports can mark it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, as_classifier, check_images, randn_like
from mlsafety.metrics import auroc
from mlsafety.monitoring.ood.base import DETECTORS, Detector, FitData, collect_inputs


def synthetic_outliers(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Outliers made from in-distribution images ``x`` (N, C, H, W): a third with their pixels
    permuted (per image), a third blended half-half with Gaussian noise, a third as mosaics of
    four quadrants from four different images. Same shape, in [0, 1], on ``x``'s device.
    """
    check_images(x)
    n, c, h, w = x.shape
    parts = torch.arange(n) % 3
    out = x.clone()
    # 1. pixel permutations (one permutation per image, shared by its channels)
    idx = (parts == 0).nonzero()[:, 0]
    if len(idx):
        keys = torch.rand(len(idx), h * w, generator=generator)
        perm = keys.argsort(dim=1).to(x.device)
        flat = x[idx.to(x.device)].reshape(len(idx), c, h * w)
        out[idx.to(x.device)] = flat.gather(2, perm[:, None, :].expand(-1, c, -1)).reshape(len(idx), c, h, w)
    # 2. heavy noise
    idx = (parts == 1).nonzero()[:, 0].to(x.device)
    if len(idx):
        noise = randn_like(x[idx], generator)
        out[idx] = (0.5 * x[idx] + 0.5 * (0.5 + 0.5 * noise)).clamp(0, 1)
    # 3. quadrant mosaics
    idx = (parts == 2).nonzero()[:, 0]
    if len(idx):
        donors = torch.randint(0, n, (len(idx), 4), generator=generator).to(x.device)
        hh, ww = h // 2, w // 2
        mosaic = x[donors[:, 0]].clone()
        mosaic[:, :, :hh, ww:] = x[donors[:, 1]][:, :, :hh, ww:]
        mosaic[:, :, hh:, :ww] = x[donors[:, 2]][:, :, hh:, :ww]
        mosaic[:, :, hh:, ww:] = x[donors[:, 3]][:, :, hh:, ww:]
        out[idx.to(x.device)] = mosaic
    return out


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
    model: nn.Module | Classifier,
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
        val_x: held-out in-distribution inputs (not in ``fit_data``).
        generator: draws the synthetic outliers.
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
    outliers = ood_data if ood_data is not None else synthetic_outliers(val_x, generator)
    fit_x, fit_y = collect_inputs(fit_data)
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
