"""MSP after temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017)."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Outputs, Param
from mlsafety.monitoring.calibration.scaling import TemperatureScaler
from mlsafety.monitoring.ood.base import IMAGE, TEXT, Detector, register


@register("temperature-msp", tags=(IMAGE, TEXT))
class TemperatureMSP(Detector):
    """Anomaly score ``-max softmax(logits / T)``.

    Guo et al. fit ``T`` on held-out validation data: fit this detector on such data (or give
    ``temperature``); a :class:`~mlsafety.monitoring.ood.ScoreCache` given ``held_out`` data (the
    audit's validation data when it has training data) fits it there. On the model's training data
    ``T`` comes out lower (sharper) than the calibrated one, and where every fit input is classified as
    its label (or the data has no labels, so the predictions stand in) the NLL has no minimum: ``T``
    ends at the fitter's lower bound and the scores are all (nearly) ``-1``.

    Args:
        temperature: a fixed ``T``; None fits it by NLL on the (labelled) in-distribution fit data.
    """

    needs = frozenset({"logits"})
    requires_fit = True
    fit_held_out = True

    temperature: Param[float | None] = Param(
        None, float, low=0, low_open=True, doc="a fixed temperature; None fits it by NLL on the fit data"
    )

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        if self.temperature is not None:
            self.temperature_ = float(self.temperature)
        else:
            self.temperature_ = TemperatureScaler().fit(outputs.logits, labels).temperature_

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        return -(outputs.logits / self.temperature_).softmax(dim=1).amax(dim=1)
