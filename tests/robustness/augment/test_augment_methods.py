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


def test_mixup_weight_is_beta_alpha_alpha() -> None:
    """One lam per batch, lam ~ Beta(alpha, alpha) (Zhang et al. 2018): a KS test against Beta(0.4, 0.4)
    (U-shaped; Beta(alpha, 1) or a uniform draw fails it) and the images mixed by that lam."""
    from scipy import stats

    x, y = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    lams = []
    for seed in range(400):
        batch = mixup(x, y, 0.4, generator(seed, "mixup-beta"))
        lams.append(batch.lam)
        partner = x[[int((y == int(b)).nonzero()) for b in batch.y_b]]
        torch.testing.assert_close(batch.x, batch.lam * x + (1 - batch.lam) * partner)
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(lams, "uniform").pvalue < 1e-4


def test_cutmix_box_has_area_one_minus_lam_before_clipping() -> None:
    """Yun et al. 2019: the box's sides are sqrt(1 - lam) of the image's, lam ~ Beta(alpha, alpha). With
    alpha large lam is about 0.5, so a box inside the image (not clipped) covers about half of it; the
    returned lam is one minus the pasted share (checked on class-constant images above)."""
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    inside = 0
    for seed in range(200):  # about one box in twelve lies inside
        batch = cutmix(x, y, 2000.0, generator(seed, "cutmix-box"))
        if torch.equal(batch.y_b, y):  # every image its own partner: nothing visibly pasted
            continue
        changed = (batch.x != x).any(dim=0)[0]
        rows = changed.any(dim=1).nonzero().flatten()
        cols = changed.any(dim=0).nonzero().flatten()
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 1 - batch.lam == pytest.approx(float(area) / 64**2)
        if rows.min() > 0 and rows.max() < 63 and cols.min() > 0 and cols.max() < 63:
            inside += 1
            # sides int(64 sqrt(1 - lam)) for lam = 0.5 +- 3 sd (0.008): 44 to 47, cut to an even 44 or 46
            assert 44**2 / 64**2 <= 1 - batch.lam <= 46**2 / 64**2
        else:
            assert 1 - batch.lam <= 46**2 / 64**2
    assert inside >= 5


def test_augmix_loss_is_the_clean_cross_entropy_plus_twelve_jsd(tiny_net, tiny_data) -> None:
    """Hendrycks et al. 2020: CE on the clean images + 12 JS(clean, augmix1, augmix2), the two views drawn
    one after the other from the loss's generator (eval mode: the joint batch equals three forwards)."""
    from mlsafety.robustness.augment import create

    class Sharp(torch.nn.Module):  # the untrained net's logits times 100: predictions that the views move
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 100 * tiny_net(x)

    net = Sharp()
    aug = create("augmix")
    assert aug.jsd_weight == 12.0
    x, y = tiny_data.x[:6], tiny_data.y[:6]
    got = aug.loss(net, x, y, generator(0, "augmix-loss"))
    g = generator(0, "augmix-loss")
    a1, a2 = aug.views(x, g), aug.views(x, g)
    with torch.no_grad():
        clean, l1, l2 = net(x), net(a1), net(a2)
    assert float(jsd_loss(clean, l1, l2)) > 1e-3  # the views differ: the consistency term counts
    want = F.cross_entropy(clean, y) + 12 * jsd_loss(clean, l1, l2)
    torch.testing.assert_close(got.detach(), want)
