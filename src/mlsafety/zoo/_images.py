"""Image helpers shared by the zoo's dataset makers: resizing to a model's shape, the DejaVu fonts."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mlsafety.core import InputError


def resize_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images (N, C', H', W') in [0, 1] made (N, C, H, W): area down-sampling or bilinear up-sampling,
    one channel repeated or three averaged."""
    c, h, w = shape
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="area" if x.shape[-1] >= w else "bilinear", align_corners=None)
    if x.shape[1] != c:
        x = x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
    return x.clamp(0, 1).contiguous()


def font_files() -> list[Path]:
    """The DejaVu fonts Matplotlib ships (the letters OOD sets are drawn in them)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf"]
    files = [ttf / n for n in names if (ttf / n).is_file()]
    if not files:
        raise InputError(f"no DejaVu fonts found under {ttf}; reinstall matplotlib")
    return files
