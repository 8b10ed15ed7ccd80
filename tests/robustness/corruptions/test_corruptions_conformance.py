"""Conformance over every corruption, severity, image size and channel count: never a silent no-op.

For all 19 corruptions x severities 1-5 x sizes {8, 28, 32, 64, 224} x {1, 3} channels, with the
parameter table chosen by size (CIFAR-10-C below 46 px, Tiny-ImageNet-C to 119 px, ImageNet-C above):

* the corruption is applicable, except ``saturate`` on one channel, which declares itself not
  applicable (a grey image has no saturation) at every severity and size;
* an applicable corruption changes the images (some value by at least half an 8-bit level);
* its damage grows with severity: ``1 - SSIM`` between clean and corrupted images (global SSIM per
  image and channel, Wang et al. 2004), averaged over a seeded batch with texture, never drops by more
  than ``TOLERANCE`` from one severity to the next and is larger at 5 than at 1. ``saturate`` is
  excepted (its severities 1-2 desaturate and 3-5 saturate, a change of kind, not of degree), and so is
  one step of one published table: ``snow`` from severity 4 to 5 under CIFAR-10-C's parameters, where
  for some draws 1 - SSIM falls while the added light grows; that step is held to the mean absolute
  difference instead (see the test).

Each severity draws from the same generator (common random numbers), so severities differ by their
parameters, not by their random draws. SSIM rather than the mean absolute difference: blends that
darken the image while they add a bright layer (frost, spatter) lose structure with severity while the
absolute difference can shrink, and SSIM's structure and contrast terms see that.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlsafety.core import generator
from mlsafety.robustness.corruptions import CHANGE_FLOOR, TABLES, available, create, table_for

SIZES = [8, 28, 32, 64, 224]  # the whole grid runs in a few seconds: nothing to mark slow
TOLERANCE = 0.02
"""Largest drop of ``1 - SSIM`` allowed between consecutive severities (glass-blur's CIFAR-10-C and
Tiny-ImageNet-C tables are not monotone in their blur sigma and dip by up to 0.015)."""


def textured_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded photo-like images on the 8-bit grid in [0.1, 0.9]: smooth structure, a ramp and texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 5, 5, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    x = 0.5 * x + 0.2 * ramp + 0.3 * torch.rand(n, c, size, size, generator=g)
    return (0.1 + 0.8 * x / x.amax()).mul(255).round().div(255)


def ssim_damage(x: torch.Tensor, y: torch.Tensor) -> float:
    """``1 - SSIM(x, y)`` with global statistics per image and channel, averaged (Wang et al. 2004)."""
    dims = (2, 3)
    mx, my = x.mean(dims), y.mean(dims)
    vx, vy = x.var(dims, unbiased=False), y.var(dims, unbiased=False)
    cov = ((x - mx[..., None, None]) * (y - my[..., None, None])).mean(dims)
    c1, c2 = 0.01**2, 0.03**2  # the paper's constants for a dynamic range of 1
    ssim = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(1 - ssim.mean())


def batch_size(channels: int, size: int) -> int:
    """At least 1,024 values per batch up to 16 images (random corruptions of tiny images hit it), 1 at 224 px."""
    return max(1, min(16, math.ceil(1024 / (channels * size * size))))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", available())
def test_every_corruption_changes_its_input_and_damage_grows_with_severity(name, size, channels):
    corruption = create(name)
    x = textured_images(batch_size(channels, size), channels, size)
    undefined = name == "saturate" and channels == 1
    reasons = [corruption.not_applicable(size, channels, s) for s in range(1, 6)]
    if undefined:
        assert all(r is not None and "no saturation" in r for r in reasons)
        return
    assert reasons == [None] * 5, reasons
    damage = []
    for severity in range(1, 6):
        y = corruption(x, severity, generator(0, "conformance", name))
        change = float((y - x).abs().max())
        assert change >= CHANGE_FLOOR, f"{name} at {size} px, {channels} ch, severity {severity}: a no-op"
        damage.append(ssim_damage(x, y))
    if name == "saturate":
        return
    rounded = [round(d, 4) for d in damage]
    steps = list(itertools.pairwise(damage))
    if name == "snow" and table_for(size) == "cifar-10-c":
        # CIFAR-10-C's severity 5 smears finer flakes with twice the streak width of severity 4: more
        # light is always added (the mean absolute difference grows), but for some draws the flakes blur
        # into a haze that keeps more of the image's structure and 1 - SSIM falls by up to 0.09
        mad = [float((corruption(x, s, generator(0, "conformance", name)) - x).abs().mean()) for s in (4, 5)]
        assert mad[1] > mad[0], f"snow: mean absolute difference {mad} falls from severity 4 to 5"
        steps = steps[:3]
    assert all(b >= a - TOLERANCE for a, b in steps), f"{table_for(size)}: {rounded}"
    assert damage[4] > damage[0], f"{table_for(size)}: {rounded}"


@pytest.mark.parametrize(
    ("size", "table"),
    [(1, "cifar-10-c"), (8, "cifar-10-c"), (45, "cifar-10-c"), (46, "tiny-imagenet-c"), (119, "tiny-imagenet-c"),
     (120, "imagenet-c"), (224, "imagenet-c"), (1024, "imagenet-c")],
)  # fmt: skip
def test_table_is_the_nearest_on_a_log_scale(size, table):
    assert table_for(size) == table
    nearest = min(TABLES.values(), key=lambda t: abs(math.log(size / t)))
    assert TABLES[table] == nearest


def test_lengths_are_scaled_within_a_table_and_never_shrunk_below_cifar():
    blur = create("gaussian-blur")
    scale = {s: blur.scale(torch.zeros(1, 1, s, s)) for s in (8, 28, 32, 40, 64, 100, 224, 448)}
    assert scale[8] == scale[28] == scale[32] == 1.0  # CIFAR-10-C's pixel lengths as published
    assert scale[40] == 40 / 32 and scale[100] == 100 / 64 and scale[448] == 2.0
    assert blur.level_for(8, 5) == 1.0 and blur.level_for(64, 5) == 1.5 and blur.level_for(224, 5) == 6.0


@pytest.mark.parametrize(
    ("name", "channels", "severities"),
    [("defocus-blur", 3, [1, 2, 3, 4, 5]), ("gaussian-blur", 1, [1, 2, 3, 4, 5]), ("motion-blur", 3, [1])],
)
def test_the_former_silent_no_ops_are_declared_under_imagenet_parameters(name, channels, severities):
    """ImageNet-C's lengths shrunk to 8 px (the former default) leave these blurs below a pixel: the
    probe reports them as not applicable instead of letting them pass as survived hazards."""
    shrunk = create(name, table="imagenet-c")
    x = textured_images(4, channels, 8)
    for s in severities:
        reason = shrunk.not_applicable(8, channels, s)
        assert reason is not None and "imagenet-c" in reason and "half an 8-bit level" in reason
        assert float((shrunk(x, s) - x).abs().max()) < CHANGE_FLOOR  # the probe tells the truth
        assert create(name).applicable(8, channels, s)  # the automatic table changes them


def test_probe_needs_a_real_change_and_validates():
    assert create("fog").applicable((8, 12), 3, 1)
    assert not create("pixelate").applicable(1, 3, 5)  # one pixel cannot be pixelated
    assert not create("defocus-blur").applicable(1, 1, 5)  # nor blurred
    from mlsafety.core import InputError

    for bad in [((8, 8), 2, 1), ((0, 8), 1, 1), ((8, 8), 1, 6)]:
        with pytest.raises(InputError):
            create("fog").not_applicable(*bad)
