"""Synthetic validation outliers (each transform checked by what it must preserve) and the plot."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import ArrayDataset, InputError, generator
from mlsafety.systemic import OUTLIER_TRANSFORMS, Outcome, swiss_cheese_png, synthetic_outliers


def _data(n: int = 12) -> ArrayDataset:
    g = generator(0, "outlier-src")
    return ArrayDataset(torch.rand(n, 1, 5, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_transforms_do_what_they_say() -> None:
    x = _data().x
    g = generator(0, "tf")
    shuffled = OUTLIER_TRANSFORMS["pixel-shuffle"](x, g)
    assert torch.equal(shuffled.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert not torch.equal(shuffled, x)
    assert torch.equal(OUTLIER_TRANSFORMS["invert"](x, g), 1 - x)
    blend = OUTLIER_TRANSFORMS["blend"](x, g)
    other = 2 * blend - x  # must be another input of the batch
    assert all(any(torch.allclose(o, xi, atol=1e-6) for j, xi in enumerate(x) if j != i) for i, o in enumerate(other))
    nb = OUTLIER_TRANSFORMS["noise-blend"](x, g)
    assert bool(((nb - 0.5 * x) >= 0).all()) and bool(((nb - 0.5 * x) <= 0.5).all())


def test_synthetic_outliers_shape_labels_determinism() -> None:
    data = _data()
    a = synthetic_outliers(data, generator(0, "o"), n=10)
    b = synthetic_outliers(data, generator(0, "o"), n=10)
    assert a.x.shape == (10, 1, 5, 4)
    assert torch.equal(a.x, b.x)
    assert bool((a.y == -1).all()) and a.is_ood
    assert float(a.x.min()) >= 0 and float(a.x.max()) <= 1
    assert len(synthetic_outliers(data, generator(0, "o"))) == len(data)
    with pytest.raises(InputError):
        synthetic_outliers(data, generator(0, "o"), n=2)


def test_swiss_cheese_png() -> None:
    o = Outcome(torch.tensor([True, False, True, False]), torch.tensor([True, False, False, False]))
    png = swiss_cheese_png({"clean": o, "adversarial/pgd/0.1": o}, adaptive={"adversarial/pgd/0.1": o})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(OUTLIER_TRANSFORMS))
def test_transform_conformance(name: str) -> None:
    """Every transform: same shape and dtype, inside [0, 1], deterministic, input untouched, and
    different from its input (an outlier, not a copy)."""
    for shape in ((6, 1, 5, 4), (6, 3, 4, 4)):
        x = torch.rand(shape, generator=generator(0, "conf", name, *shape))
        before = x.clone()
        a = OUTLIER_TRANSFORMS[name](x, generator(0, "t", name))
        b = OUTLIER_TRANSFORMS[name](x, generator(0, "t", name))
        assert a.shape == x.shape and a.dtype == x.dtype
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert torch.equal(a, b) and torch.equal(x, before)
        assert not torch.allclose(a, x)
