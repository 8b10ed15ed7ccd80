"""Known answers and invariants of Mixup, CutMix, AugMix (ops and JSD) and PixMix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlsafety.core import InputError, generator
from mlsafety.robustness.augment import (
    augmix,
    cutmix,
    fractals,
    jsd_loss,
    mixing_pictures,
    mixup,
    patterns,
    pixmix,
    soft_cross_entropy,
)
from mlsafety.robustness.augment._ops import autocontrast, equalize, posterize, rotate, solarize, translate_x


def class_constant_images(n: int = 16, k: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % k
    values = torch.linspace(0.1, 0.9, k)
    return values[y].view(-1, 1, 1, 1).expand(n, 1, size, size).contiguous(), y, values


@pytest.mark.parametrize("fn", [mixup, cutmix])
def test_mixed_images_agree_with_mixed_labels(fn):
    x, y, values = class_constant_images()
    for seed in range(5):
        batch = fn(x, y, 1.0, generator(seed, "mix"))
        t = batch.targets(4)
        assert torch.allclose(t.sum(1), torch.ones(len(y)))
        # every image is constant per class, so its mean is the label mixture applied to the class values
        assert torch.allclose(batch.x.mean(dim=(1, 2, 3)), t @ values, atol=1e-6)
        logits = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(batch.loss(logits), soft_cross_entropy(logits, t), atol=1e-6)


def test_cutmix_pastes_one_rectangle():
    x, y, _ = class_constant_images(size=16)
    batch = cutmix(x, y, 1.0, generator(3, "cut"))
    changed = (batch.x != x).any(dim=0)[0]
    if changed.any():
        rows = changed.any(dim=1).nonzero().flatten()
        cols = changed.any(dim=0).nonzero().flatten()
        assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


def test_mix_parameters_checked():
    x, y, _ = class_constant_images()
    with pytest.raises(InputError):
        mixup(x, y, 0.0, generator(0))
    with pytest.raises(InputError):
        cutmix(x, y, -1.0, generator(0))


def test_ops_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 9, 9, generator=g) * 0.5 + 0.2
    one, ten = torch.ones(2), torch.full((2,), 10.0)
    st = autocontrast(x, one, one)
    assert torch.allclose(st.amin(dim=(2, 3)), torch.zeros(2, 1)) and torch.allclose(
        st.amax(dim=(2, 3)), torch.ones(2, 1)
    )
    eq = equalize(x, one, one)
    assert float(eq.amax()) == pytest.approx(1.0) and abs(float(eq.mean()) - 0.5) < 0.1  # flat histogram
    assert torch.equal(solarize(x, torch.full((2,), 10.0), one), 1 - x)  # threshold 0: everything inverted
    assert torch.equal(solarize(x, torch.full((2,), 0.0), one), x)  # threshold 256/255: nothing
    post = posterize(x, ten, one)  # 4 - 4 = 0 bits kept... of 8: values snap to multiples of 256/255
    assert set(torch.unique((post * 255).round()).tolist()) <= {0.0}
    assert torch.allclose(rotate(x, torch.full((2,), 30.0), one), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or \
        torch.allclose(rotate(x, torch.full((2,), 30.0), one), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)  # fmt: skip
    shifted = translate_x(x, torch.full((2,), 10 / 3), one)  # a third of 9 px x level/10 = 1 px
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-6) and torch.equal(
        shifted[..., -1], torch.zeros(2, 1, 9)
    )


def test_augmix_is_a_convex_mix_in_range():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 16, 16, generator=g)
    a = augmix(x, generator(0, "augmix"))
    b = augmix(x, generator(0, "augmix"))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert float((a - x).abs().mean()) > 0.01
    with pytest.raises(InputError):
        augmix(x, generator(0), width=0)


def test_jsd_known_values():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert float(jsd_loss(z, z, z)) == pytest.approx(0.0, abs=1e-6)
    big = 40.0
    a = torch.tensor([[big, 0.0]])
    b = torch.tensor([[0.0, big]])
    want = (2 * math.log(1.5) + math.log(3)) / 3  # two votes for class 0, one for class 1
    assert float(jsd_loss(a, a, b)) == pytest.approx(want, abs=1e-4)
    assert float(jsd_loss(a, b, a)) == pytest.approx(want, abs=1e-4)  # symmetric in its arguments
    p = [F.softmax(t, 1) for t in (z, z.flip(1), z * 2)]
    m = (p[0] + p[1] + p[2]) / 3
    direct = sum((q * (q / m).log()).sum(1).mean() for q in p) / 3
    assert float(jsd_loss(z, z.flip(1), z * 2)) == pytest.approx(float(direct), abs=1e-5)


def test_mixing_pictures():
    pics = mixing_pictures(16, (3, 16, 16), generator(0, "pictures"))
    assert pics.shape == (16, 3, 16, 16) and pics.min() >= 0 and pics.max() <= 1
    assert torch.equal(pics, mixing_pictures(16, (3, 16, 16), generator(0, "pictures")))
    assert not torch.equal(pics, mixing_pictures(16, (3, 16, 16), generator(1, "pictures")))
    fr = fractals(6, (1, 16, 16), generator(0, "f"))
    assert torch.allclose(fr.amax(dim=(1, 2, 3)), fr.amax(dim=(1, 2, 3)).clamp(0.3, 1.0))  # bright attractor
    assert float((fr == 0).float().mean()) > 0.1  # sparse: much of the picture is background
    pa = patterns(6, (3, 16, 16), generator(0, "p"))
    assert float(pa.std(dim=(1, 2, 3)).min()) > 0.05  # structured, not flat
    with pytest.raises(InputError):
        mixing_pictures(0, (1, 8, 8))


@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (3, 3, 5, 7)])
def test_odd_sizes(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(shape[0], dtype=torch.long)
    outs = [augmix(x, generator(0)), pixmix(x, mixing_pictures(4, shape[1:]), generator(0)),
            mixup(x, y, 1.0, generator(0)).x, cutmix(x, y, 1.0, generator(0)).x]  # fmt: skip
    for out in outs:
        assert out.shape == x.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_pixmix_range_determinism_and_effect():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(24, 1, 8, 8, generator=g)
    pics = mixing_pictures(8, (1, 8, 8))
    a = pixmix(x, pics, generator(0, "pixmix"))
    assert torch.equal(a, pixmix(x, pics, generator(0, "pixmix")))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert float((a - x).abs().mean()) > 0.01
    none = pixmix(x, pics, generator(0, "pixmix"), k=0)  # no mixing rounds: the image or one augmented copy
    assert float((none - x).abs().amax(dim=(1, 2, 3)).eq(0).float().mean()) > 0.2
    with pytest.raises(InputError):
        pixmix(x, mixing_pictures(4, (1, 4, 4)), generator(0))
