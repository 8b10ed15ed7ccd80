"""The per-severity parameters used at 32, 64 and 224 px equal the published tables.

The expected values are typed in here from the generator scripts of Hendrycks & Dietterich (2019)
(github.com/hendrycks/robustness, ``ImageNet-C/create_c/make_cifar_c.py``,
``make_tinyimagenet_c.py``, ``make_imagenet_c.py``), so a misread or drifted entry in a class's
``levels`` / ``tiny_levels`` / ``cifar_levels`` fails here (the other tests read the class's own
table and cannot see one). Elastic transform follows another formulation (documented) and is left out.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlsafety.robustness.corruptions import create


def _zooms(stop: float, step: float) -> tuple[float, ...]:
    """``np.arange(1, stop, step)`` as the scripts write it (float steps: 1.06 is included), to 2 decimals."""
    return tuple(round(float(v), 2) for v in np.arange(1, stop, step))


PUBLISHED: dict[str, dict[int, list[object]]] = {
    "gaussian-noise": {
        32: [0.04, 0.06, 0.08, 0.09, 0.10],
        64: [0.04, 0.08, 0.12, 0.15, 0.18],
        224: [0.08, 0.12, 0.18, 0.26, 0.38],
    },
    "shot-noise": {32: [500, 250, 100, 75, 50], 64: [250, 100, 50, 30, 15], 224: [60, 25, 12, 5, 3]},
    "impulse-noise": {
        32: [0.01, 0.02, 0.03, 0.05, 0.07],
        64: [0.01, 0.02, 0.05, 0.08, 0.14],
        224: [0.03, 0.06, 0.09, 0.17, 0.27],
    },
    "speckle-noise": {
        32: [0.06, 0.1, 0.12, 0.16, 0.2],
        64: [0.15, 0.2, 0.25, 0.3, 0.35],
        224: [0.15, 0.2, 0.35, 0.45, 0.6],
    },
    "gaussian-blur": {32: [0.4, 0.6, 0.7, 0.8, 1], 64: [0.5, 0.75, 1, 1.25, 1.5], 224: [1, 2, 3, 4, 6]},
    "glass-blur": {
        32: [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        64: [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
        224: [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    },
    "defocus-blur": {
        32: [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        64: [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
        224: [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    },
    "motion-blur": {
        32: [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        64: [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        224: [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    },
    "zoom-blur": {
        32: [_zooms(1.06, 0.01), _zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.01), _zooms(1.26, 0.01)],
        64: [_zooms(1.06, 0.01), _zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.01), _zooms(1.26, 0.01)],
        224: [_zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.02), _zooms(1.26, 0.02), _zooms(1.31, 0.03)],
    },
    "snow": {
        32: [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        64: [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
        ],
        224: [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
    },
    "frost": {
        32: [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        64: [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
        224: [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    },
    "fog": {
        32: [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        64: [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
        224: [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    },
    "spatter": {
        32: [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        64: [
            (0.62, 0.1, 0.7, 0.7, 0.6, 0),
            (0.65, 0.1, 0.8, 0.7, 0.6, 0),
            (0.65, 0.3, 1, 0.69, 0.6, 0),
            (0.65, 0.1, 0.7, 0.68, 0.6, 1),
            (0.65, 0.1, 0.5, 0.67, 0.6, 1),
        ],
        224: [
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ],
    },
    "brightness": {
        32: [0.05, 0.1, 0.15, 0.2, 0.3],
        64: [0.1, 0.2, 0.3, 0.4, 0.5],
        224: [0.1, 0.2, 0.3, 0.4, 0.5],
    },
    "contrast": {
        32: [0.75, 0.5, 0.4, 0.3, 0.15],
        64: [0.4, 0.3, 0.2, 0.1, 0.05],
        224: [0.4, 0.3, 0.2, 0.1, 0.05],
    },
    "saturate": {
        32: [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
        64: [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)],
        224: [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    },
    "jpeg-compression": {32: [80, 65, 58, 50, 40], 64: [65, 58, 50, 40, 25], 224: [25, 18, 15, 10, 7]},
    "pixelate": {
        32: [0.95, 0.9, 0.85, 0.75, 0.65],
        64: [0.9, 0.8, 0.7, 0.6, 0.5],
        224: [0.6, 0.5, 0.4, 0.3, 0.25],
    },
}


def _as_tuple(v: object) -> tuple[float, ...]:
    return tuple(float(e) for e in v) if isinstance(v, tuple) else (float(v),)  # type: ignore[arg-type]


def test_zoom_factors_follow_numpy_arange_counts():
    # np.arange(1, 1.06, 0.01) has 7 entries (1.06 included by float rounding), np.arange(1, 1.16, 0.01) 16
    assert len(_zooms(1.06, 0.01)) == 7 and _zooms(1.06, 0.01)[-1] == 1.06
    assert len(_zooms(1.11, 0.01)) == 12 and len(_zooms(1.16, 0.01)) == 16 and _zooms(1.16, 0.01)[-1] == 1.15
    assert [len(_zooms(*a)) for a in ((1.21, 0.02), (1.26, 0.02), (1.31, 0.03))] == [11, 13, 11]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("size", [32, 64, 224])
def test_levels_equal_the_published_tables(name, size):
    corruption = create(name)
    for severity, want in enumerate(PUBLISHED[name][size], start=1):
        got = corruption.level_for(size, severity)
        assert _as_tuple(got) == pytest.approx(_as_tuple(want), abs=1e-12), (name, size, severity)
