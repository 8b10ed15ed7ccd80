"""ImageNet-C corruptions in torch: batched, deterministic, any size, one or three channels, any device.

The 15 corruptions of Hendrycks & Dietterich (2019) and their 4 extra ones, at severities 1..5 with
the published parameters of the table nearest to the image size (CIFAR-10-C, Tiny-ImageNet-C or
ImageNet-C; lengths scaled to the image size, see :mod:`.base`), an applicability test for each
(size, channels, severity), plus corruption error metrics (CE, mCE, relative mCE) and a grid picture
of them all.

Example:
    >>> from mlsafety.robustness.corruptions import corrupt, available
    >>> x_snow = corrupt(x, "snow", severity=3, generator=mlsafety.core.generator(0, "snow"))
"""

from mlsafety.robustness.corruptions import blur, digital, noise, weather
from mlsafety.robustness.corruptions._grid import corruption_grid, grid_figure, read_image
from mlsafety.robustness.corruptions._metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    CorruptionSummary,
    check_baseline,
    mce,
)
from mlsafety.robustness.corruptions.base import (
    CHANGE_FLOOR,
    CORRUPTIONS,
    MIN_FIELD,
    SEVERITIES,
    TABLES,
    Corruption,
    available,
    corrupt,
    create,
    register_corruption,
    table_for,
)

del blur, digital, noise, weather

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "CHANGE_FLOOR",
    "CORRUPTIONS",
    "MIN_FIELD",
    "SEVERITIES",
    "TABLES",
    "Corruption",
    "CorruptionSummary",
    "available",
    "check_baseline",
    "corrupt",
    "corruption_grid",
    "create",
    "grid_figure",
    "mce",
    "read_image",
    "register_corruption",
    "table_for",
]
