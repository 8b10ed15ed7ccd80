"""Synthetic outliers made from validation inputs, for choosing a monitor without seeing test hazards.

The monitor of a system is chosen on validation data only: the clean validation inputs (where the
model's own mistakes are the failures) and outliers made from them by transformations that destroy
what makes them in-distribution while keeping their pixel statistics close. None of these is one of
the audit's hazards (corruptions, attacks, OOD sets), so the choice does not peek at the test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlsafety.core import ArrayDataset, InputError, rand_like


def _pixel_shuffle(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's pixel positions permuted at random (same permutation across its channels)."""
    n, c, h, w = x.shape
    order = rand_like(torch.empty(n, h * w, device=x.device), g).argsort(dim=1)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def _blend(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two different inputs averaged: a superposition of two objects."""
    shift = 1 + int(torch.randint(0, max(1, x.shape[0] - 1), (1,), generator=g))
    return 0.5 * (x + x.roll(shift, dims=0))


def _invert(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Photometric negative ``1 - x``."""
    return 1.0 - x


def _noise_blend(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Half the input, half uniform noise."""
    return 0.5 * x + 0.5 * rand_like(x, g)


OUTLIER_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "pixel-shuffle": _pixel_shuffle,
    "blend": _blend,
    "invert": _invert,
    "noise-blend": _noise_blend,
}
"""The transforms, by name; each maps (N, C, H, W) in [0, 1] to the same shape and range."""


def synthetic_outliers(data: ArrayDataset, generator: torch.Generator, n: int | None = None) -> ArrayDataset:
    """Outliers (label ``-1``) made from ``data``: equal shares of every transform in
    :data:`OUTLIER_TRANSFORMS`, each applied to a random sample of the inputs.

    Args:
        data: in-distribution validation inputs.
        generator: CPU generator for every random choice.
        n: number of outliers (default ``len(data)``).
    """
    if len(data) == 0:
        raise InputError("cannot make outliers from an empty dataset")
    n = len(data) if n is None else n
    if n < len(OUTLIER_TRANSFORMS):
        raise InputError(f"ask for at least {len(OUTLIER_TRANSFORMS)} synthetic outliers, not {n}")
    parts = []
    names = list(OUTLIER_TRANSFORMS)
    for i, name in enumerate(names):
        count = n // len(names) + (1 if i < n % len(names) else 0)
        idx = torch.randint(0, len(data), (count,), generator=generator)
        parts.append(OUTLIER_TRANSFORMS[name](data.x[idx], generator).clamp(0, 1))
    x = torch.cat(parts).contiguous()
    return ArrayDataset(
        x,
        torch.full((n,), -1, dtype=torch.long),
        name="synthetic-outliers",
        kind="far",
        description=f"validation inputs transformed by {', '.join(names)}",
    )
