"""The corruption family: base class, registry and factory.

Every corruption of ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", 2019) and its four extra ones is a :class:`Corruption`
subclass in this package, registered under its dashed name (``gaussian-noise``). A corruption maps
a batch ``(N, C, H, W)`` in [0, 1] (C = 1 or 3, any H and W, any device) to a corrupted batch of the
same shape, dtype and device, at a severity 1..5 with the published per-severity parameters.

Image size. ImageNet-C's parameters were written for 224-pixel images. Parameters that are lengths
in pixels (blur radii and widths, motion length, displacements, flake and droplet sizes) are
multiplied by ``s = min(H, W) / reference_size`` (``reference_size`` defaults to 224), so a
corruption of a small picture looks like the 224-pixel corruption of the same picture scaled up,
corrupted and scaled back down. Random fields with a spatial structure (snow, frost, spatter,
elastic displacements) are drawn at a working size of at least :data:`MIN_FIELD` pixels on the
short side and area-resampled to the image, so their statistics do not collapse on tiny images.
Parameters that are not lengths (noise levels, contrast factors, JPEG quality, pixelation factors,
zoom factors) are used as published.

Randomness comes only from the ``generator`` passed in (a CPU generator by default; samples are
drawn on the generator's device and moved to the input's), so CPU results are reproducible.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mlsafety.core import InputError, Registry
from mlsafety.core import generator as make_generator

SEVERITIES = (1, 2, 3, 4, 5)
"""The ImageNet-C severity levels."""

MIN_FIELD = 32
"""Short side (pixels) below which random spatial fields are drawn larger and resampled."""


class Corruption:
    """Base class: a named, severity-indexed, batched image corruption.

    Subclasses set ``group`` (noise, blur, weather, digital), ``extra`` (True for the four held-out
    corruptions speckle-noise, gaussian-blur, spatter and saturate), ``levels`` (the published
    parameters, one entry per severity) and write :meth:`apply`.

    Args:
        reference_size: the image side the published pixel lengths refer to (ImageNet: 224).
            Lengths are scaled by ``min(H, W) / reference_size``.
    """

    name: ClassVar[str]
    group: ClassVar[str] = ""
    extra: ClassVar[bool] = False
    levels: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, reference_size: float = 224) -> None:
        if reference_size <= 0:
            raise InputError(f"reference_size must be positive, got {reference_size}")
        self.reference_size = float(reference_size)

    def __call__(self, x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``x`` (N, C, H, W) in [0, 1] at ``severity`` (1..5).

        ``generator`` defaults to one seeded from 0, the corruption's name and the severity, so two
        calls without a generator give the same result. The input is never modified.
        """
        _check(x)
        if x.shape[1] not in (1, 3):
            raise InputError(f"corruptions take 1 or 3 channels, got {x.shape[1]}; convert the images first")
        if isinstance(severity, bool) or int(severity) != severity or severity not in SEVERITIES:
            raise InputError(f"severity must be an integer from 1 to 5, got {severity!r}")
        if generator is None:
            generator = make_generator(0, "corruption", self.name, int(severity))
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        with torch.no_grad():
            out = self.apply(work, self.levels[int(severity) - 1], generator)
            # clip in place unless apply handed back (a view of) the input, which is never modified
            out = out.clamp(0.0, 1.0) if _shares_memory(out, x) else out.clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def apply(self, x: torch.Tensor, level: Any, g: torch.Generator) -> torch.Tensor:
        """The corruption at the published parameters ``level``; may leave values outside [0, 1]."""
        raise NotImplementedError

    def scale(self, x: torch.Tensor) -> float:
        """The factor that turns a published length in pixels into one for ``x``'s size."""
        return min(x.shape[-2:]) / self.reference_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reference_size={self.reference_size:g})"


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _check(x: torch.Tensor) -> None:
    """Shape, dtype and range checks in one pass over the data (NaN fails the range test)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"images must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (lo >= 0.0 and hi <= 1.0):
        raise InputError(f"images must lie in [0, 1] without NaN (found [{lo:.3g}, {hi:.3g}]); scale pixels to [0, 1]")


CORRUPTIONS: Registry[Corruption] = Registry("corruption")
register_corruption = CORRUPTIONS.register


def available(extra: bool = True) -> list[str]:
    """Registered corruption names, sorted; ``extra=False`` keeps only the 15 of ImageNet-C."""
    return [n for n in CORRUPTIONS.available() if extra or not CORRUPTIONS.get(n).extra]


def create(name: str, **params: Any) -> Corruption:
    """The corruption ``name`` with hyper-parameters ``params`` (``reference_size``)."""
    return CORRUPTIONS.create(name, **params)


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    reference_size: float = 224,
) -> torch.Tensor:
    """Corrupt a batch ``x`` (N, C, H, W) in [0, 1] with corruption ``name`` at ``severity`` (1..5).

    Example:
        >>> g = mlsafety.core.generator(0, "demo")
        >>> x_fog = corrupt(x, "fog", 3, generator=g)
    """
    return create(name, reference_size=reference_size)(x, severity, generator)
