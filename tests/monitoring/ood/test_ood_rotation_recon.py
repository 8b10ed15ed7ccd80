"""Rotation prediction and denoising reconstruction: planted signals and known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, InputError, as_classifier, generator
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood, training
from mlsafety.monitoring.ood.rotation import kl_from_uniform, rotation_features


def _pixels_net(k: int = 3, side: int = 8) -> nn.Module:
    """Features = the flattened pixels (the head's input), so the rotation head sees the image itself."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(side * side, k)).eval()


def _barred(n: int, g: torch.Generator) -> torch.Tensor:
    """In-distribution images whose rotation shows: a bright bar on the top rows, faint noise elsewhere."""
    x = 0.2 * torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, :2, :] = 0.8 + 0.2 * torch.rand(n, 1, 2, 8, generator=g)
    return x


def _invariant(n: int, g: torch.Generator) -> torch.Tensor:
    """Images equal to their own quarter turns (the mean of a noise image's four rotations)."""
    z = torch.rand(n, 1, 8, 8, generator=g)
    return sum(torch.rot90(z, r, dims=(-2, -1)) for r in range(4)) / 4  # type: ignore[return-value]


def test_rotation_head_learns_rotations_of_in_distribution_inputs() -> None:
    g = generator(0, "rotation-test")
    net, fit, test, inv = _pixels_net(), _barred(200, g), _barred(50, g), _invariant(50, g)
    det = ood.create("rotation", epochs=20).fit(net, fit)
    s_in, s_inv = det.score(net, test), det.score(net, inv)
    floor = 4 * math.log(4)  # a head that sees four identical inputs loses at least sum_r -log p_r >= 4 log 4
    assert float(s_inv.min()) >= floor - 1e-4
    assert float(s_in.mean()) < 0.25 * floor
    assert float(auroc(s_in, s_inv)) == 1.0


def test_rotation_kl_term_is_the_negated_kl_from_uniform() -> None:
    g = generator(1, "rotation-test")
    net, fit, test = _pixels_net(), _barred(100, g), _barred(20, g)
    plain = ood.create("rotation", epochs=5).fit(net, fit)
    both = ood.create("rotation", epochs=5, kl_weight=2.0).fit(net, fit)
    _, logits = rotation_features(as_classifier(net), test)
    want = plain.score(net, test) - 2.0 * kl_from_uniform(logits)
    torch.testing.assert_close(both.score(net, test), want, rtol=1e-5, atol=1e-5)
    # KL(U || p) by hand for one row of logits
    lg = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]])
    p = lg.softmax(dim=1)[0]
    assert float(kl_from_uniform(lg)[0]) == pytest.approx(float(sum((1 / 3) * math.log((1 / 3) / q) for q in p)))


def test_rotation_at_kl_weight_four_ranks_as_the_papers_combined_score() -> None:
    """The paper's (and OpenOOD's) multi-class confidence is ``KL(U || p) - mean_r CE_r``, the rotation loss averaged
    over the four turns; this detector sums the turns, so ``kl_weight = 4`` gives that confidence times -4 (by hand,
    from the head's logits of each turn)."""
    g = generator(2, "rotation-test")
    net, fit, test = _pixels_net(), _barred(100, g), torch.cat([_barred(10, g), _invariant(10, g)])
    det = ood.create("rotation", epochs=5, kl_weight=4.0).fit(net, fit)
    feats, logits = rotation_features(as_classifier(net), test)
    with torch.no_grad():
        ce = torch.stack([-det.head_(feats[r]).log_softmax(dim=1)[:, r] for r in range(4)])  # (4, N)
    p = logits.double().softmax(dim=1)
    kl = ((1 / 3) * ((1 / 3) / p).log()).sum(dim=1)
    paper = kl - ce.double().mean(dim=0)
    torch.testing.assert_close(det.score(net, test).double(), -4 * paper, rtol=1e-5, atol=1e-5)


def test_rotation_refuses_non_square_images() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with pytest.raises(InputError, match="rotation needs square images"):
        ood.create("rotation").fit(net, torch.rand(10, 1, 6, 8))


def test_rotation_recipe_with_outlier_exposure_leaves_the_model_unchanged() -> None:
    g = generator(2, "rotation-test")
    net = _pixels_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = ArrayDataset(_barred(120, g), torch.randint(0, 3, (120,), generator=g), name="barred")
    outliers = _invariant(60, g)
    tuned, head = training.rotation_training(net, data, outliers=outliers, fine_tune=True, epochs=4, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    det = ood.Rotation.from_head(head)
    s_in, s_inv = det.score(tuned, _barred(40, g)), det.score(tuned, _invariant(40, g))
    assert float(auroc(s_in, s_inv)) > 0.95


def test_reconstruction_with_an_identity_denoiser_is_the_noise_alone() -> None:
    net = _pixels_net()
    det = ood.create("reconstruction", denoiser=nn.Identity(), standardize=False, draws=4, levels=3)
    det.fit(net, torch.rand(8, 1, 8, 8))
    a = det.score(net, torch.zeros(300, 1, 8, 8))
    b = det.score(net, torch.ones(300, 1, 8, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the error is the noise itself, whatever the input
    want = sum(s**2 for s in (0.1, 0.3, 0.5)) / 3  # E ||sigma eps||^2 / d, averaged over the levels
    assert float(a.mean()) == pytest.approx(want, rel=0.03)
    assert det.stored_params()["denoiser"] == "module:Identity"


def test_reconstruction_standardises_each_level_by_its_fit_mean_and_spread() -> None:
    """With one level the standardised score is ``(e - mean e_fit) / std e_fit`` of the raw errors (the noise is
    seeded per call, so the raw detector's scores are the errors each call sees)."""
    net, g = _pixels_net(), generator(4, "recon-test")
    fit, test = torch.rand(30, 1, 8, 8, generator=g), torch.rand(12, 1, 8, 8, generator=g)
    kw = {"denoiser": nn.Sequential(nn.AvgPool2d(2), nn.Upsample(scale_factor=2)), "sigma_min": 0.2, "sigma_max": 0.2}
    raw = ood.create("reconstruction", standardize=False, levels=1, **kw).fit(net, fit)
    e_fit, e_test = raw.score(net, fit).double(), raw.score(net, test).double()
    want = (e_test - e_fit.mean()) / e_fit.std()
    got = ood.create("reconstruction", levels=1, **kw).fit(net, fit).score(net, test).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want.abs().max() > 0.1


def test_reconstruction_with_a_trained_denoiser_separates_a_shifted_set() -> None:
    from mlsafety.robustness import train_denoiser
    from mlsafety.zoo import ConvDenoiser

    g = generator(3, "recon-test")
    rows = torch.rand(300, 1, 8, 1, generator=g)
    fit = rows.expand(300, 1, 8, 8).clone()  # in-distribution: horizontal stripes (constant along each row)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        den = ConvDenoiser(channels=1, width=8, depth=2)
    den = train_denoiser(den, fit, sigma=0.25, epochs=15, lr=5e-3)
    test = torch.rand(60, 1, 8, 1, generator=g).expand(60, 1, 8, 8)
    shifted = test.transpose(-1, -2)  # vertical stripes: the same pixel values, turned a quarter
    det = ood.create("reconstruction", denoiser=den, sigma_min=0.25, sigma_max=0.25, levels=1).fit(_pixels_net(), fit)
    assert float(auroc(det.score(_pixels_net(), test), det.score(_pixels_net(), shifted))) > 0.9


def test_reconstruction_refuses_when_no_denoiser_fits() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    with pytest.raises(InputError, match="no embedded denoiser fits inputs of shape 1x28x28"):
        ood.create("reconstruction").fit(net, torch.rand(4, 1, 28, 28))
    with pytest.raises(InputError, match="trained on 1x8x8 images, not 1x28x28"):
        ood.create("reconstruction", denoiser="digits-denoiser-50").fit(net, torch.rand(4, 1, 28, 28))
    with pytest.raises(InputError, match="not an embedded denoiser"):
        ood.create("reconstruction", denoiser="fashion-cnn").fit(net, torch.rand(4, 1, 28, 28))


def test_reconstruction_feature_term_adds_the_feature_space_error() -> None:
    # identity denoiser and features = the pixels: each term is about sigma^2 at mid-grey (no clipping at 0.1)
    net = _pixels_net()
    x = torch.full((400, 1, 8, 8), 0.5)
    kw = {"denoiser": nn.Identity(), "standardize": False, "sigma_min": 0.1, "sigma_max": 0.1, "levels": 1}
    pixels = ood.create("reconstruction", **kw).fit(net, x[:4]).score(net, x)
    both = ood.create("reconstruction", feature_weight=1.0, **kw).fit(net, x[:4]).score(net, x)
    assert float(pixels.mean()) == pytest.approx(0.01, rel=0.03)
    torch.testing.assert_close(both, 2 * pixels, rtol=1e-4, atol=1e-7)  # same draws: the same error twice
