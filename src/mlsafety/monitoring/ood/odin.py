"""ODIN (Liang et al., "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus a small input pre-processing step."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param
from mlsafety.monitoring.ood.base import IMAGE, Detector, preprocessed_scores, register


@register("odin", tags=(IMAGE,))
class ODIN(Detector):
    """Anomaly score ``-max softmax(f(x') / T)`` with ``x' = clip(x + eps * sign(grad_x log S_max(x)))``.

    The step raises the temperature-scaled top softmax score, which helps in-distribution inputs
    more than OOD ones. ``eps`` is in [0, 1] pixel units (the model owns its normalisation), and
    ``x'`` is clipped to [0, 1]. Needs one gradient with respect to the input per batch.

    Args:
        temperature: ``T`` (paper default).
        noise: ``eps``, the step size (0 turns the pre-processing off).
    """

    needs = frozenset({"logits", "input-grad"})

    temperature = Param(1000.0, float, low=0, low_open=True, doc="temperature T of the softmax")
    noise = Param(0.0014, float, low=0, doc="input step eps in pixel units (0: no pre-processing)")

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        t = self.temperature
        return preprocessed_scores(
            clf, x, batch_size, self.noise,
            objective=lambda xg: (clf.logits(xg) / t).log_softmax(dim=1).amax(dim=1),  # raise the top softmax
            score=lambda xb: -(clf.logits(xb) / t).softmax(dim=1).amax(dim=1),
        )  # fmt: skip
