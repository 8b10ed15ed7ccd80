"""alpha-BN: test statistics mixed with the training statistics (Schneider et al. 2020, "Improving
robustness against common corruptions by covariate shift adaptation"; You et al. 2021, "Test-time
batch statistics calibration for covariate shift"), a defence against malicious test inputs."""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mlsafety.core import InputError, Param
from mlsafety.robustness.tta.base import TTAMethod, batch_statistics, register_tta


@register_tta("alpha-bn", tags=("image", "statistics", "defence"))
class AlphaBN(TTAMethod):
    """Normalise with ``alpha * training + (1 - alpha) * test-batch`` mean and variance.

    The training (running) statistics bound how far a few malicious inputs can move the
    normalisation: a share m of the batch moves the mixed mean by at most ``(1 - alpha)`` times what
    it moves the batch mean. ``alpha = 0`` is TeBN, ``alpha = 1`` the unadapted model. Departs from
    Schneider et al. (who weight by a prior sample count N) in taking the weight directly, as
    You et al.'s alpha-BN does. Needs layers that track running statistics.
    """

    alpha = Param(0.5, float, low=0, high=1, doc="weight of the training statistics")

    def statistics(self, layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = batch_statistics(x)
        if layer.running_mean is None or layer.running_var is None:
            raise InputError("alpha-bn needs batch-norm layers that track running statistics; use 'tebn' or 'medbn'")
        rm, rv = layer.running_mean.to(mean.dtype), layer.running_var.to(var.dtype)
        return self.alpha * rm + (1 - self.alpha) * mean, self.alpha * rv + (1 - self.alpha) * var
