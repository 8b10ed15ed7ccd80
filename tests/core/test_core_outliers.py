"""The two synthetic-outlier recipes of ``mlsafety.core``: each checked by what it must make."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import (
    ArrayDataset,
    InputError,
    generator,
    permute_noise_mosaic_outliers,
    transform_mix_outliers,
)
from mlsafety.core._outliers import OUTLIER_TRANSFORMS  # the recipe's table, documented there


def _data(n: int = 12) -> ArrayDataset:
    g = generator(0, "outlier-src")
    return ArrayDataset(torch.rand(n, 1, 5, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


# -- permute / noise / mosaic (detector tuning, outlier exposure) ------------------------------
def test_permute_noise_mosaic_parts_do_what_they_say() -> None:
    x = torch.rand(30, 3, 8, 8, generator=generator(0, "pnm"))
    before = x.clone()
    a = permute_noise_mosaic_outliers(x, generator(0, "o"))
    b = permute_noise_mosaic_outliers(x, generator(0, "o"))
    assert torch.equal(a, b) and a.shape == x.shape and torch.equal(x, before)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    for i in range(0, 30, 3):  # part 0: the image's own pixels, in another order, same order per channel
        assert torch.equal(a[i].flatten(1).sort(dim=1).values, x[i].flatten(1).sort(dim=1).values)
        assert not torch.equal(a[i], x[i])
        src = (a[i, 0].flatten()[:, None] == x[i, 0].flatten()[None, :]).nonzero()[:, 1]  # where each came from
        assert torch.equal(a[i, 1].flatten(), x[i, 1].flatten()[src])
    for i in range(2, 30, 3):  # part 2: every quadrant is the same quadrant of some input
        for rows in (slice(0, 4), slice(4, 8)):
            for cols in (slice(0, 4), slice(4, 8)):
                assert any(torch.equal(a[i, :, rows, cols], xj[:, rows, cols]) for xj in x)
    changed = (a[1::3] - x[1::3]).abs().flatten(1).amax(dim=1)
    assert bool((changed > 0).all())  # part 1: noise changes every image


def test_permute_noise_mosaic_refuses_non_images() -> None:
    with pytest.raises(InputError):
        permute_noise_mosaic_outliers(torch.rand(4, 8), generator(0, "o"))


# -- transform mix (choosing the defence-in-depth monitor) ------------------------------------
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


def test_transform_mix_shape_labels_shares_determinism() -> None:
    data = _data()
    a = transform_mix_outliers(data, generator(0, "o"), n=10)
    b = transform_mix_outliers(data, generator(0, "o"), n=10)
    assert a.x.shape == (10, 1, 5, 4)
    assert torch.equal(a.x, b.x)
    assert bool((a.y == -1).all()) and a.is_ood
    assert float(a.x.min()) >= 0 and float(a.x.max()) <= 1
    # equal shares in the order of OUTLIER_TRANSFORMS (3, 3, 2, 2): the invert share is 1 - some input
    inverted = a.x[6:8]
    assert all(any(torch.allclose(1 - o, xi) for xi in data.x) for o in inverted)
    assert len(transform_mix_outliers(data, generator(0, "o"))) == len(data)
    with pytest.raises(InputError):
        transform_mix_outliers(data, generator(0, "o"), n=2)
    with pytest.raises(InputError):
        transform_mix_outliers(ArrayDataset(data.x[:0], data.y[:0]), generator(0, "o"))


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


def test_the_two_recipes_differ() -> None:
    x = _data(12).x
    a = permute_noise_mosaic_outliers(x, generator(0, "o"))
    b = transform_mix_outliers(ArrayDataset(x, torch.zeros(12, dtype=torch.long)), generator(0, "o")).x
    assert not torch.equal(a, b)


def test_word_shuffle_outliers_permute_each_texts_words_and_sample_without_replacement() -> None:
    from mlsafety.core import TextDataset, Texts, word_shuffle_outliers

    texts = [f"w{i}a w{i}b w{i}c w{i}d w{i}e" for i in range(20)]
    data = TextDataset(Texts(texts), torch.zeros(20, dtype=torch.long), name="val")
    out = word_shuffle_outliers(data, torch.Generator().manual_seed(0), n=8)
    assert len(out) == 8 and out.kind == "far" and out.name == "val-word-shuffle"
    assert (out.y == -1).all()
    sources = [next(t for t in texts if sorted(t.split()) == sorted(s.split())) for s in out.x]
    assert len(set(sources)) == 8  # a sample without replacement, each a permutation of one text
    assert any(s != src for s, src in zip(out.x, sources, strict=True))  # the order does change
    again = word_shuffle_outliers(data, torch.Generator().manual_seed(0), n=8)
    assert list(again.x) == list(out.x)
    assert len(word_shuffle_outliers(data, torch.Generator().manual_seed(0))) == 20
    with pytest.raises(InputError, match="at least one"):
        word_shuffle_outliers(data, torch.Generator().manual_seed(0), n=0)
