"""Known answers: each corruption against its published definition, a peer implementation or an invariant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlsafety.core import generator
from mlsafety.robustness.corruptions import CORRUPTIONS, corrupt, create
from mlsafety.robustness.corruptions.blur import disk_kernel
from mlsafety.robustness.corruptions.weather import FROST_COLOUR
from tests.corruption_images import const, uint8_images


# -- blur ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_blur_matches_scipy_at_reference_size(severity):
    from scipy.ndimage import gaussian_filter

    sigma = CORRUPTIONS.get("gaussian-blur").levels[severity - 1]
    x = uint8_images(2, 3, 40)
    y = corrupt(x, "gaussian-blur", severity, reference_size=40)  # scale 1: published sigma in pixels
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    assert np.abs(y.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize(
    ("size", "sigma"),
    [
        (8, 1.0),  # CIFAR-10-C's 1 px, not shrunk below 32 px
        (40, 1.25),  # CIFAR-10-C's 1 px scaled by 40 / 32
        (56, 1.3125),  # Tiny-ImageNet-C's 1.5 px scaled by 56 / 64
        (160, 6 * 160 / 224),  # ImageNet-C's 6 px scaled by 160 / 224
    ],
)
def test_gaussian_blur_sigma_follows_the_table_of_the_image_size(size, sigma):
    from scipy.ndimage import gaussian_filter

    x = uint8_images(1, 1, size)
    y = corrupt(x, "gaussian-blur", 5)
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    assert np.abs(y.numpy() - ref).max() < 1e-5


def test_explicit_table_scales_its_lengths_without_a_floor():
    from scipy.ndimage import gaussian_filter

    x = uint8_images(1, 1, 16)
    y = corrupt(x, "gaussian-blur", 5, table="cifar-10-c")  # 1 px at 32 -> 0.5 px at 16
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, 0.5, 0.5), mode="nearest", truncate=4.0)
    assert np.abs(y.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("radius", [3.0, 6.0, 10.0])
def test_defocus_disk_has_published_radius(radius):
    k = disk_kernel(radius, 0.0, torch.zeros(()))
    assert abs(float(k.sum()) - 1) < 1e-6
    area = 1 / float(k.max())  # flat top: the centre weight is 1 / area
    assert abs(area - math.pi * radius**2) < 0.03 * math.pi * radius**2
    half = k.shape[0] // 2
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    assert float(k[(yy**2 + xx**2).sqrt() > radius + 0.75].sum()) == 0.0


def test_defocus_blur_is_the_disk_convolution():
    x = torch.zeros(1, 1, 63, 63)
    x[0, 0, 31, 31] = 1.0  # an impulse gives the kernel back
    y = corrupt(x, "defocus-blur", 3, reference_size=63)
    k = disk_kernel(6, 0.5, x)
    h = k.shape[0] // 2
    assert torch.allclose(y[0, 0, 31 - h : 32 + h, 31 - h : 32 + h], k, atol=1e-6)


def test_motion_blur_smears_along_one_line_of_published_length():
    x = torch.zeros(1, 1, 96, 96)
    x[0, 0, 48, 48] = 1.0
    y = corrupt(x, "motion-blur", 5, generator=generator(3), reference_size=96)[0, 0]  # radius 20 -> 40 px path
    assert abs(float(y.sum()) - 1) < 1e-5
    ys, xs = torch.nonzero(y > 0, as_tuple=True)
    pts = torch.stack([xs - 48.0, ys - 48.0], 1)
    w = y[ys, xs]
    reach = float((pts**2).sum(1).sqrt().max())
    assert 38 <= reach <= 41.5
    cov = (w[:, None, None] * pts[:, :, None] * pts[:, None, :]).sum(0)
    evals = torch.linalg.eigvalsh(cov)
    assert float(evals[0] / evals[1]) < 0.02  # a line, not a blob


def test_zoom_blur_averages_centre_zooms():
    size = 64
    ramp = torch.linspace(0.2, 0.8, size).view(1, 1, 1, size).expand(1, 1, size, size).contiguous()
    factors = CORRUPTIONS.get("zoom-blur").levels[4]
    y = corrupt(ramp, "zoom-blur", 5, table="imagenet-c")
    slope_in = float(ramp[0, 0, 0, 33] - ramp[0, 0, 0, 31]) / 2
    slope_out = float(y[0, 0, 32, 33] - y[0, 0, 32, 31]) / 2
    # clipped_zoom enlarges the central ceil(size / z) pixels to round(ceil(size / z) * z), corners aligned
    shrink = [(math.ceil(size / z) - 1) / (round(math.ceil(size / z) * z) - 1) for z in factors]
    expected = (1 + sum(shrink)) / (len(factors) + 1)
    assert abs(slope_out / slope_in - expected) < 1e-3


def test_glass_blur_keeps_flat_images_and_scrambles_edges():
    flat = const(0.4, size=32)
    assert torch.allclose(corrupt(flat, "glass-blur", 5), flat, atol=1e-6)
    from scipy.ndimage import gaussian_filter

    x = uint8_images(1, 1, 48)
    y = corrupt(x, "glass-blur", 5, generator=generator(0), reference_size=48)
    twice = gaussian_filter(
        gaussian_filter(x.numpy(), (0, 0, 1.5, 1.5), mode="nearest"), (0, 0, 1.5, 1.5), mode="nearest"
    )
    assert float(np.abs(y.numpy() - twice).mean()) > 0.005  # the scramble is more than two blurs


# -- weather -------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 5])
def test_fog_range_on_white(severity):
    strength = create("fog").level_for(64, severity)[0]  # Tiny-ImageNet-C at 64 px
    y = corrupt(const(1.0, n=2), "fog", severity, generator=generator(0))
    for img in y:  # (1 + a * fog) / (1 + a) with a fractal spanning [0, 1]
        assert abs(float(img.min()) - 1 / (1 + strength)) < 1e-5
        assert abs(float(img.max()) - 1.0) < 1e-6


def test_frost_is_a_blend_with_frost_coloured_texture():
    a, b = create("frost").level_for(64, 3)
    y = corrupt(const(0.0, n=4), "frost", 3, generator=generator(0))
    means = (y.mean(dim=(0, 2, 3)) / b).tolist()
    for got, want in zip(means, FROST_COLOUR):
        assert abs(got - want) < 0.03
    y1 = corrupt(const(0.5, n=4), "frost", 3, generator=generator(0))
    assert torch.allclose(y1, (a * 0.5 + y).clamp(0, 1), atol=1e-6)


def test_snow_whitens_and_adds_flakes():
    keep = create("snow").level_for(64, 5)[-1]
    y = corrupt(const(0.0, n=2), "snow", 5, generator=generator(0))
    floor = (1 - keep) * 0.5  # max(x, 1.5 grey + 0.5) on black
    assert abs(float(y.min()) - floor) < 1e-5
    assert float(y.mean()) > floor + 0.02


def test_spatter_water_brightens_and_mud_darkens_towards_mud():
    grey_img = const(0.5, n=2, size=64)
    water = corrupt(grey_img, "spatter", 1, generator=generator(0))
    assert float((water - grey_img).min()) >= -1e-6 and float((water - grey_img).max()) > 0.05
    white = const(1.0, n=2, size=64)
    mud = corrupt(white, "spatter", 5, generator=generator(0))
    changed = (mud < 1 - 1e-6).float().mean()
    assert 0.01 < float(changed) < 0.9
    mud_rgb = torch.tensor([63, 42, 20]).view(1, 3, 1, 1) / 255
    assert bool((mud >= mud_rgb - 1e-6).all())


def test_reference_size_scales_lengths():
    from scipy.ndimage import gaussian_filter

    x = uint8_images(1, 1, 56)
    y = create("gaussian-blur", reference_size=112)(x, 5)  # scale 1/2: sigma 6 -> 3 px
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, 3, 3), mode="nearest", truncate=4.0)
    assert np.abs(y.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("severity", [1, 5])
def test_fog_scales_by_the_image_maximum(severity):
    # ImageNet-C: (x + s * fog) * max(x) / (max(x) + s), fog spanning [0, 1]; on a flat 0.5 image
    # the darkest pixel is 0.5 * 0.5 / (0.5 + s) and the brightest 0.5 (a scale of 1 / (1 + s) would not)
    strength = create("fog").level_for(64, severity)[0]
    y = corrupt(const(0.5, n=2), "fog", severity, generator=generator(0))
    for img in y:
        assert abs(float(img.min()) - 0.25 / (0.5 + strength)) < 1e-5
        assert abs(float(img.max()) - 0.5) < 1e-5


def test_snow_whitens_towards_the_luminance_of_a_coloured_image():
    # keep * x + (1 - keep) * max(x, 1.5 * grey(x) + 0.5) where no flake falls; grey is rgb2gray's luminance
    keep = create("snow").level_for(64, 5)[-1]
    rgb = torch.tensor([0.2, 0.4, 0.1])
    x = rgb.view(1, 3, 1, 1).expand(2, 3, 64, 64).contiguous()
    y = corrupt(x, "snow", 5, generator=generator(0))
    lift = 1.5 * float(0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]) + 0.5
    floor = keep * rgb + (1 - keep) * torch.clamp(rgb, min=lift)
    torch.testing.assert_close(y.amin(dim=(0, 2, 3)), floor, atol=1e-5, rtol=0)
