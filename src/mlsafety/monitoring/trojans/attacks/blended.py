"""Blended: a fixed full-image pattern mixed in (Chen, Liu, Li, Lu & Song, "Targeted Backdoor
Attacks on Deep Learning Systems Using Data Poisoning", 2017)."""

from __future__ import annotations

import torch

from mlsafety.core import Param, generator
from mlsafety.monitoring.trojans.attacks.base import TROJAN_ATTACKS, TriggerAttack


@TROJAN_ATTACKS.register("blended")
class Blended(TriggerAttack):
    """Blended: a fixed full-image pattern ``p`` mixed in at ratio ``alpha``, ``x' = (1 - alpha) x + alpha p``.

    The pattern is uniform noise drawn on a grid of ``block x block`` pixel blocks at the input's
    shape (blocks keep the pattern learnable under the small random shifts of the training
    augmentation).
    """

    alpha = Param(0.3, float, low=0, high=1, low_open=True, high_open=True, doc="blend ratio")
    pattern_seed = Param(0, int, doc="seed of the blend pattern")
    block = Param(2, int, low=1, doc="side of the noise blocks in pixels (1 = per-pixel noise)")

    def pattern_for(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The blend pattern (C, H, W) in [0, 1] for inputs of ``shape``."""
        c, h, w = shape
        b = self.block
        g = generator(self.pattern_seed, "blended-pattern", *shape, b)
        coarse = torch.rand(c, -(-h // b), -(-w // b), generator=g)
        return coarse.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :h, :w].contiguous()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern_for(tuple(x.shape[1:])).to(x.device, x.dtype)  # type: ignore[arg-type]
        return (1 - self.alpha) * x + self.alpha * p
