"""MedBN: median batch statistics (Park et al. 2024, "MedBN: Robust Test-Time Adaptation against
Malicious Test Samples", CVPR), a defence against malicious test inputs."""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mlsafety.robustness.tta.base import TTAMethod, register_tta


def median_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel median and median squared deviation ``(G, C)`` of ``x`` ``(G, B, C, *spatial)``.

    The median is taken over the batch and spatial positions together; for an even count it is
    the lower of the two middle values (``torch.median``), so it is always an observed value.
    """
    flat = x.transpose(1, 2).flatten(2)  # (G, C, B * spatial)
    med = flat.median(dim=-1).values
    var = (flat - med.unsqueeze(-1)).square().median(dim=-1).values
    return med, var


@register_tta("medbn", tags=("image", "statistics", "defence"))
class MedBN(TTAMethod):
    """Normalise with the median instead of the mean, and the median squared deviation from it
    instead of the variance, so a minority of malicious inputs cannot drag the statistics far.

    Departures from Park et al.: only the statistics-only form (MedBN applied to TeBN) is
    registered here, and the median squared deviation is used as the variance without a Gaussian
    consistency factor (for normal activations it is about 0.45 of the variance, a constant the
    scale of the next layers sees as a fixed gain).
    """

    def statistics(self, layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return median_statistics(x)
