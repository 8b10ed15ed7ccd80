"""BadNets: a small patch stamped onto the image (Gu, Dolan-Gavitt & Garg, "BadNets: Identifying
Vulnerabilities in the Machine Learning Model Supply Chain", 2017)."""

from __future__ import annotations

import torch

from mlsafety.core import InputError, Param
from mlsafety.monitoring.trojans.attacks.base import TROJAN_ATTACKS, TriggerAttack

CORNERS: dict[str, tuple[bool, bool]] = {
    "bottom-right": (True, True),
    "bottom-left": (True, False),
    "top-right": (False, True),
    "top-left": (False, False),
}
"""Where a patch may sit: corner name -> (at the bottom, at the right)."""


def patch_values(pattern: str, size: int) -> torch.Tensor:
    """The ``size x size`` patch: ``checker`` (white/black checkerboard, white top-left pixel) or ``solid`` (white)."""
    if pattern == "checker":
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return ((ii + jj + 1) % 2).float()
    if pattern == "solid":
        return torch.ones(size, size)
    raise InputError(f"BadNets pattern must be 'checker' or 'solid', got {pattern!r}")


@TROJAN_ATTACKS.register("badnets")
class BadNets(TriggerAttack):
    """BadNets: a small patch stamped onto the image (Gu et al., "BadNets", 2017)."""

    size = Param(3, int, low=1, doc="side of the square patch in pixels")
    corner = Param("bottom-right", str, choices=tuple(CORNERS), doc="where the patch sits")
    margin = Param(0, int, low=0, doc="pixels between the patch and the image border")
    pattern = Param(
        "checker", str, choices=("checker", "solid"), doc="checker (white/black, white top-left pixel) or solid (white)"
    )

    def mask_and_pattern(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The trigger as (mask (1, H, W), pattern (C, H, W)), both in [0, 1]."""
        c, h, w = shape
        if self.size + self.margin > min(h, w):
            raise InputError(f"a {self.size}-pixel patch with margin {self.margin} does not fit {h}x{w} images")
        bottom, right = CORNERS[self.corner]
        top = h - self.margin - self.size if bottom else self.margin
        left = w - self.margin - self.size if right else self.margin
        mask = torch.zeros(1, h, w)
        pattern = torch.zeros(c, h, w)
        mask[:, top : top + self.size, left : left + self.size] = 1.0
        pattern[:, top : top + self.size, left : left + self.size] = patch_values(self.pattern, self.size)
        return mask, pattern

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        mask, pattern = (t.to(x.device, x.dtype) for t in self.mask_and_pattern(tuple(x.shape[1:])))  # type: ignore[arg-type]
        return (1 - mask) * x + mask * pattern
