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

    Which variance: the authors' code (github.com/ml-postech/MedBN-robust-test-time-adaptation,
    ``models/norm.py``) has two median variants. Its ``med`` norm (``MedNorm`` / ``RobustMedBN2d``)
    centres at the median but scales by the *mean* squared deviation from it; its ``mm`` norm
    (``MMNorm`` / ``RobustMMBN2d``) scales by the squared median absolute deviation, which equals
    the median squared deviation used here. Neither applies a Gaussian consistency factor (for
    normal activations the median squared deviation is about 0.45 of the variance, a fixed gain the
    next layers see), and neither does this module. It follows ``mm``: a minority of malicious
    inputs moves neither of its statistics far, whereas the mean squared deviation grows without
    bound with one extreme input. Departures from Park et al.: where their MedBN is the ``med``
    norm, the variance here is the median one; only the statistics-only form (MedBN applied to
    TeBN) is registered.
    """

    def statistics(self, layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return median_statistics(x)
