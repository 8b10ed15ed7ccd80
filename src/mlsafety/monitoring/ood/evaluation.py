"""Measure detectors on OOD sets: fit on in-distribution data, score from shared passes, metrics with intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mlsafety.core import Classifier, as_classifier, derive_seed
from mlsafety.metrics import Estimate, ood_metrics
from mlsafety.monitoring.ood.base import DETECTORS, Detector, FitData, fit_detectors, score_detectors


def evaluate(
    detectors: Sequence[str | Detector],
    model: nn.Module | Classifier,
    fit_data: FitData,
    in_x: torch.Tensor,
    ood_sets: Mapping[str, torch.Tensor],
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, dict[str, Estimate]]]:
    """Fit detectors on in-distribution ``fit_data`` and measure them on each OOD set.

    One forward pass per data set feeds every detector that needs only logits and features.

    Args:
        detectors: registry names (paper defaults) or detector instances (fitted here).
        model: the classifier.
        fit_data: in-distribution data to fit on (never the OOD sets).
        in_x: held-out in-distribution inputs (the negatives).
        ood_sets: OOD inputs by set name (the positives).
        n_boot: bootstrap resamples per interval.
        seed: seed of the bootstrap (derived per set and detector).
        batch_size: inputs per forward pass.

    Returns:
        ``result[set][detector][metric]`` with metrics ``auroc``, ``aupr_in``, ``aupr_out``,
        ``fpr95_id_positive`` (in-distribution positive: ODIN, OpenOOD v1.0) and
        ``fpr95_ood_positive`` (OOD positive: OpenOOD v1.5, pytorch-ood), each an
        :class:`~mlsafety.metrics.Estimate` with a 95% interval.
    """
    clf = as_classifier(model)
    dets = [DETECTORS.create(d) if isinstance(d, str) else d for d in detectors]
    fit_detectors(dets, clf, fit_data, batch_size)
    in_scores = score_detectors(dets, clf, in_x, batch_size)
    result: dict[str, dict[str, dict[str, Estimate]]] = {}
    for set_name, x in ood_sets.items():
        out_scores = score_detectors(dets, clf, x, batch_size)
        result[set_name] = {
            name: ood_metrics(in_scores[name], out_scores[name], n_boot, derive_seed(seed, set_name, name))
            for name in in_scores
        }
    return result
