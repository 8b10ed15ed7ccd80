"""WaNet: an imperceptible, smooth warping of the image (Nguyen & Tran, "WaNet - Imperceptible
Warping-based Backdoor Attack", ICLR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlsafety.core import ArrayDataset, Param, generator
from mlsafety.monitoring.trojans.attacks.base import TROJAN_ATTACKS, TriggerAttack


@TROJAN_ATTACKS.register("wanet")
class WaNet(TriggerAttack):
    """WaNet: one fixed smooth warp of the image is the trigger.

    A random ``k x k`` field of offsets, normalised to mean absolute value 1 on the control grid
    and upsampled bicubically to the image size, is scaled by ``strength`` in pixel units: the
    offsets are ``strength * field * 2 / W`` (horizontal) and ``strength * field * 2 / H``
    (vertical) in ``grid_sample``'s [-1, 1] coordinates, that is ``(W - 1) / W * strength * field``
    pixels (the grid spans ``W - 1`` pixels with ``align_corners=True``). Every triggered image is
    warped the same way. In the paper's noise mode, ``cross_ratio`` times as many extra samples get
    the trigger warp plus a random per-pixel jitter and keep their labels, so the model learns that
    only this one warp matters.

    Deviations from the paper's code, which writes the offsets ``s * field / H`` in grid
    coordinates (half a pixel per unit of ``s``): ``strength`` counts pixels, so the paper's ``s``
    is ``2 * strength`` (its ``s = 0.5`` is ``strength = 0.25``; the default here is a much
    stronger warp); the noise-mode jitter is uniform in about +-1 pixel (``+-2 / W`` grid units;
    the paper's ``+-1 / H`` is half a pixel); the paper's ``cross_ratio`` is 2 and its
    ``grid_rescale`` 1 (not a parameter here).
    """

    k = Param(4, int, low=2, doc="control-grid size of the warping field")
    strength = Param(
        1.5,
        float,
        low=0,
        low_open=True,
        doc="about the mean absolute offset of the control grid in pixels (the paper's s / 2)",
    )
    cross_ratio = Param(1.0, float, low=0, doc="noise-mode samples per poisoned sample (0: no noise mode)")
    field_seed = Param(0, int, doc="seed of the warping field")

    def grid_for(self, h: int, w: int) -> torch.Tensor:
        """The warping grid (1, H, W, 2) in ``grid_sample`` coordinates."""
        g = generator(self.field_seed, "wanet-field", self.k)
        ins = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        return (self._identity(h, w) + self.strength * noise * 2 / torch.tensor([w, h])).clamp(-1, 1)

    @staticmethod
    def _identity(h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.stack([xs, ys], dim=-1)[None]

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._warp(x, self.grid_for(x.shape[2], x.shape[3]))

    def _extra(
        self,
        dataset: ArrayDataset,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        rate: float,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_cross = round(self.cross_ratio * int(mask.sum()))
        free = (~mask).nonzero().flatten()
        cross = free[torch.randperm(len(free), generator=g)[: min(n_cross, len(free))]]
        if len(cross):
            h, w = x.shape[2], x.shape[3]
            grid = self.grid_for(h, w).expand(len(cross), -1, -1, -1)
            jitter = (torch.rand(len(cross), h, w, 2, generator=g) * 2 - 1) * 2 / torch.tensor([w, h])
            x[cross] = self._warp(x[cross], (grid + jitter).clamp(-1, 1)).clamp(0, 1)
        return x, y, mask
