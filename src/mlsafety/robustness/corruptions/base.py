"""The corruption family: base class, registry and factory.

Every corruption of ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019) and its four extra ones is a :class:`Corruption`
subclass in this package, registered under its dashed name (``gaussian-noise``). A corruption maps
a batch ``(N, C, H, W)`` in [0, 1] (C = 1 or 3, any H and W, any device) to a corrupted batch of the
same shape, dtype and device, at a severity 1..5 with the published per-severity parameters.

Parameter tables. The paper's generator scripts (github.com/hendrycks/robustness,
``ImageNet-C/create_c/``) publish one table per image size: ``make_cifar_c.py`` for 32-pixel images
(CIFAR-10-C), ``make_tinyimagenet_c.py`` for 64 pixels (Tiny-ImageNet-C) and ``make_imagenet_c.py``
for 224 pixels (ImageNet-C); they are :data:`TABLES`. Each subclass carries the three
(``cifar_levels``, ``tiny_levels``, ``levels``); the values were read from those scripts.

Image size. With ``table=None`` (the default) the table is chosen per call from the image's short
side ``s`` by :func:`table_for`: the table whose size is nearest to ``s`` on a log scale (CIFAR-10-C
below 45 px, Tiny-ImageNet-C from 46 to 119 px, ImageNet-C from 120 px). Sizes are compared by
ratio because what matters for a pixel length is how many times larger or smaller the image is
than the one the table was written for. Parameters that are lengths in pixels (blur radii and
widths, motion length, displacements, flake and droplet sizes) are then multiplied by
``s / table size``, so a 100-pixel image gets Tiny-ImageNet-C's lengths times 1.56 and a 299-pixel
one ImageNet-C's times 1.33, as if the image had been scaled to the table's size, corrupted and
scaled back. Below 32 pixels the CIFAR-10-C lengths are used as published, not shrunk: they are
already a few tenths of a pixel to a few pixels, and shrinking them further (to 8/32 of that on an
8-pixel image) would turn every blur into the identity, hiding the hazard instead of scaling it.
Parameters that are not lengths (noise levels, contrast factors, JPEG quality, pixelation factors,
zoom factors) are used as published in the chosen table.

An explicit ``table`` uses that table at every size, its lengths scaled by ``s / reference_size``
(the table's size unless given), with no floor; ``reference_size`` alone keeps ImageNet-C's table
scaled from that size (this package's former behaviour). Random fields with a spatial structure
(snow, frost, spatter, elastic displacements) are drawn at a working size of at least
:data:`MIN_FIELD` pixels on the short side and area-resampled to the image, so their statistics do
not collapse on tiny images.

Applicability. A corruption that cannot change an input of a given size and channel count is *not
applicable* there and must never be counted as robustness: :meth:`Corruption.applicable` says so
and :meth:`Corruption.not_applicable` says why. Two cases exist: a corruption undefined for the
input (``saturate`` on one channel: a grey image has no saturation), which ``__call__`` refuses,
and one whose parameters act below what an 8-bit image can show at that size (e.g. a blur kernel
narrower than a pixel under an explicit table), found by a probe (see :meth:`not_applicable`).

Randomness comes only from the ``generator`` passed in (a CPU generator by default; samples are
drawn on the generator's device and moved to the input's), so CPU results are reproducible.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from mlsafety.core import InputError, Registry
from mlsafety.core import generator as make_generator

SEVERITIES = (1, 2, 3, 4, 5)
"""The ImageNet-C severity levels."""

MIN_FIELD = 32
"""Short side (pixels) below which random spatial fields are drawn larger and resampled."""

TABLES: dict[str, int] = {"cifar-10-c": 32, "tiny-imagenet-c": 64, "imagenet-c": 224}
"""The published parameter tables and the image side each was written for (Hendrycks & Dietterich 2019)."""

_SMALLEST = min(TABLES, key=TABLES.__getitem__)

CHANGE_FLOOR = 0.5 / 255
"""A corruption changes an image when some value moves by at least half an 8-bit level: less is lost
when the image is stored in 8 bits, so it is no corruption at all."""

_PROBE_VALUES = 4096
"""Values (pixels x channels x images) the applicability probe corrupts, so random corruptions of small
images (impulse noise at 1% on 8 x 8) hit it with near certainty."""


def table_for(size: int) -> str:
    """The published table for images whose short side is ``size`` pixels: the nearest size on a log scale.

    Example:
        >>> table_for(8), table_for(28), table_for(64), table_for(100), table_for(224)
        ('cifar-10-c', 'cifar-10-c', 'tiny-imagenet-c', 'tiny-imagenet-c', 'imagenet-c')
    """
    if size < 1:
        raise InputError(f"an image side must be at least 1 pixel, got {size}")
    return min(TABLES, key=lambda t: abs(math.log(size / TABLES[t])))


class Corruption:
    """Base class: a named, severity-indexed, batched image corruption.

    Subclasses set ``group`` (noise, blur, weather, digital), ``extra`` (True for the four held-out
    corruptions speckle-noise, gaussian-blur, spatter and saturate), the published parameters, one
    entry per severity, of each table (``levels``: ImageNet-C, ``tiny_levels``: Tiny-ImageNet-C,
    ``cifar_levels``: CIFAR-10-C; a missing one falls back to ImageNet-C's) and write :meth:`apply`,
    which scales lengths with :meth:`scale`.

    Args:
        reference_size: the image side the chosen table's pixel lengths refer to; lengths are scaled
            by ``min(H, W) / reference_size``. None: the table's own size.
        table: one of :data:`TABLES`, used at every image size; None picks the table per image size
            (:func:`table_for`), or ImageNet-C's when ``reference_size`` is given.
    """

    name: ClassVar[str]
    group: ClassVar[str] = ""
    extra: ClassVar[bool] = False
    levels: ClassVar[tuple[Any, ...]] = ()
    tiny_levels: ClassVar[tuple[Any, ...] | None] = None
    cifar_levels: ClassVar[tuple[Any, ...] | None] = None

    def __init__(self, reference_size: float | None = None, table: str | None = None) -> None:
        if reference_size is not None and not reference_size > 0:
            raise InputError(f"reference_size must be a positive number of pixels, got {reference_size}")
        if table is not None and table not in TABLES:
            raise InputError(f"unknown parameter table {table!r}; use one of {', '.join(TABLES)} or None (by size)")
        self.reference_size = None if reference_size is None else float(reference_size)
        self.table = table

    # -- parameters ------------------------------------------------------------------------------
    def setting(self, h: int, w: int) -> tuple[str, float]:
        """The table and the reference size (pixels) used for images of ``h`` x ``w``."""
        table = self.table
        if table is None:
            table = "imagenet-c" if self.reference_size is not None else table_for(min(h, w))
        return table, self.reference_size if self.reference_size is not None else float(TABLES[table])

    def level(self, table: str, severity: int) -> Any:
        """The published parameters of ``table`` at ``severity``."""
        own = {"imagenet-c": self.levels, "tiny-imagenet-c": self.tiny_levels, "cifar-10-c": self.cifar_levels}
        return (own[table] or self.levels)[int(severity) - 1]

    def level_for(self, size: int | tuple[int, int], severity: int) -> Any:
        """The published parameters this corruption uses for images of ``size`` (side or (H, W)) at
        ``severity``, before lengths are scaled (:meth:`scale`).

        Example:
            >>> create("contrast").level_for(32, 1), create("contrast").level_for(224, 1)
            (0.75, 0.4)
        """
        h, w = (size, size) if isinstance(size, int) else size
        return self.level(self.setting(h, w)[0], severity)

    def scale(self, x: torch.Tensor, side: float | None = None) -> float:
        """The factor that turns a published length in pixels into one for ``x`` (or a field of ``side`` px).

        ``side`` is the short side of the array the lengths apply to (default: ``x``'s); the table is
        always chosen from ``x``'s size. In the automatic mode lengths are not shrunk below their
        CIFAR-10-C values (see the module notes).
        """
        h, w = x.shape[-2:]
        table, ref = self.setting(h, w)
        side = float(min(h, w) if side is None else side)
        if self.table is None and self.reference_size is None and table == _SMALLEST:
            side = max(side, ref)
        return side / ref

    # -- applicability ---------------------------------------------------------------------------
    def undefined(self, channels: int) -> str | None:
        """Why the corruption has no meaning for images of ``channels`` channels (None: it has one)."""
        return None

    def not_applicable(self, size: int | tuple[int, int], channels: int, severity: int) -> str | None:
        """Why the corruption cannot change an image of ``size`` (side or (H, W)) and ``channels``
        at ``severity``, or None when it can.

        Either it is undefined there (:meth:`undefined`) or a probe finds no effect: a seeded batch of
        8-bit noise images in [0.1, 0.9] (the most texture an image can have, at least
        :data:`_PROBE_VALUES` values so that random corruptions hit it) is corrupted and no value
        moves by :data:`CHANGE_FLOOR` (half an 8-bit level). Cached per setting.
        """
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        _check_severity(severity)
        if channels not in (1, 3):
            raise InputError(f"corruptions take 1 or 3 channels, got {channels}; convert the images first")
        if h < 1 or w < 1:
            raise InputError(f"an image size must be at least 1 x 1 pixels, got {h} x {w}")
        reason = self.undefined(channels)
        if reason is not None:
            return reason
        key = (type(self), self._key(), h, w, channels, int(severity))
        if key not in _PROBED:
            _PROBED[key] = _probe(type(self), self._key(), h, w, channels, int(severity))
        return _PROBED[key]

    def applicable(self, size: int | tuple[int, int], channels: int, severity: int) -> bool:
        """Whether the corruption changes images of ``size`` and ``channels`` at ``severity``
        (:meth:`not_applicable` gives the reason when it does not)."""
        return self.not_applicable(size, channels, severity) is None

    def _key(self) -> tuple[Any, ...]:
        return (self.reference_size, self.table)

    # -- call ------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``x`` (N, C, H, W) in [0, 1] at ``severity`` (1..5).

        ``generator`` defaults to one seeded from 0, the corruption's name and the severity, so two
        calls without a generator give the same result. The input is never modified. Raises
        :class:`~mlsafety.core.InputError` where the corruption is undefined (:meth:`undefined`).
        """
        _check(x)
        if x.shape[1] not in (1, 3):
            raise InputError(f"corruptions take 1 or 3 channels, got {x.shape[1]}; convert the images first")
        _check_severity(severity)
        reason = self.undefined(int(x.shape[1]))
        if reason is not None:
            raise InputError(f"{self.name} is not applicable here: {reason}; leave it out for these images")
        if generator is None:
            generator = make_generator(0, "corruption", self.name, int(severity))
        return self._corrupt(x, int(severity), generator)

    def _corrupt(self, x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        table, _ = self.setting(*x.shape[-2:])
        with torch.no_grad():
            out = self.apply(work, self.level(table, severity), generator)
            # clip in place unless apply handed back (a view of) the input, which is never modified
            out = out.clamp(0.0, 1.0) if _shares_memory(out, x) else out.clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def apply(self, x: torch.Tensor, level: Any, g: torch.Generator) -> torch.Tensor:
        """The corruption at the published parameters ``level``; may leave values outside [0, 1]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        ref = "None" if self.reference_size is None else f"{self.reference_size:g}"
        return f"{type(self).__name__}(reference_size={ref}, table={self.table!r})"


_PROBED: dict[tuple[Any, ...], str | None] = {}
"""Probe results by (class, parameters, H, W, C, severity); a few bytes each."""


def _probe(cls: type[Corruption], key: tuple[Any, ...], h: int, w: int, c: int, severity: int) -> str | None:
    """The probe of :meth:`Corruption.not_applicable` for one setting (``key``: the instance's parameters)."""
    corruption = cls(*key)
    n = max(1, math.ceil(_PROBE_VALUES / (h * w * c)))
    g = torch.Generator().manual_seed(20260101)
    x = torch.randint(26, 230, (n, c, h, w), generator=g).float().div_(255)  # 8-bit values in [0.1, 0.9]
    y = corruption._corrupt(x, severity, make_generator(0, "applicable", cls.name, severity))
    if float((y - x).abs().max()) >= CHANGE_FLOOR:
        return None
    table, ref = corruption.setting(h, w)
    return (
        f"at {h}x{w} px its {table} parameters (lengths scaled from {ref:g} px) change no pixel by half an 8-bit level"
    )


def _check_severity(severity: Any) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or severity not in SEVERITIES:
        raise InputError(f"severity must be an integer from 1 to 5, got {severity!r}")


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
    """The corruption ``name`` with hyper-parameters ``params`` (``reference_size``, ``table``)."""
    return CORRUPTIONS.create(name, **params)


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    reference_size: float | None = None,
    table: str | None = None,
) -> torch.Tensor:
    """Corrupt a batch ``x`` (N, C, H, W) in [0, 1] with corruption ``name`` at ``severity`` (1..5).

    ``reference_size`` and ``table`` choose the parameters as in :class:`Corruption` (default: the
    published table nearest to the image size).

    Example:
        >>> g = mlsafety.core.generator(0, "demo")
        >>> x_fog = corrupt(x, "fog", 3, generator=g)
    """
    return create(name, reference_size=reference_size, table=table)(x, severity, generator)
