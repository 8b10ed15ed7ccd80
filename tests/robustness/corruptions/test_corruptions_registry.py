"""Conformance tests over every registered corruption."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, UnknownNameError, generator
from mlsafety.robustness.corruptions import CORRUPTIONS, available, corrupt, create

NAMES = available()
IMAGENET_C = [
    "gaussian-noise", "shot-noise", "impulse-noise", "defocus-blur", "glass-blur", "motion-blur", "zoom-blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic-transform", "pixelate", "jpeg-compression",
]  # fmt: skip
EXTRA = ["speckle-noise", "gaussian-blur", "spatter", "saturate"]
DETERMINISTIC = {"brightness", "contrast", "defocus-blur", "gaussian-blur", "jpeg-compression", "pixelate",
                 "saturate", "zoom-blur"}  # fmt: skip


def smooth_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with edges, gradients and texture in [0.05, 0.65] (every corruption has something to change)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    x = 0.5 * x + 0.3 * ramp + 0.2 * torch.rand(n, c, size, size, generator=g)
    return (0.05 + 0.6 * x / x.amax()).clamp(0, 1)


def test_all_nineteen_registered():
    assert sorted(IMAGENET_C + EXTRA) == NAMES
    assert available(extra=False) == sorted(IMAGENET_C)
    assert {n for n in NAMES if CORRUPTIONS.get(n).extra} == set(EXTRA)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("channels", "size", "n"), [(1, 8, 3), (3, 8, 2), (1, 32, 2), (3, 32, 2), (3, 224, 1)])
def test_shape_dtype_range_and_input_kept(name, channels, size, n):
    x = smooth_images(n, channels, size)
    if name == "saturate" and channels == 1:
        pytest.skip("saturate is not applicable to one channel (test_saturate_refuses_grey_images)")
    before = x.clone()
    y = corrupt(x, name, 3, generator=generator(0, name))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 1, 5), (1, 1, 3, 40), (1, 3, 7, 5)])
def test_odd_sizes(name, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    if name == "saturate" and shape[1] == 1:
        pytest.skip("saturate is not applicable to one channel (test_saturate_refuses_grey_images)")
    for severity in (1, 5):
        y = corrupt(x, name, severity, generator=generator(0, name))
        assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_float64_kept(name):
    x = smooth_images(2, 3, 16).double()
    y = corrupt(x, name, 2, generator=generator(0, name))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_fixed_generator(name):
    x = smooth_images(3, 3, 32)
    a = corrupt(x, name, 4, generator=generator(1, name))
    b = corrupt(x, name, 4, generator=generator(1, name))
    assert torch.equal(a, b)
    assert torch.equal(corrupt(x, name, 4), corrupt(x, name, 4))  # default generator is seeded too
    c = corrupt(x, name, 4, generator=generator(2, name))
    assert torch.equal(a, c) == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_distance_grows_with_severity(name, channels):
    x = smooth_images(4, channels, 32)
    if name == "saturate" and channels == 1:
        pytest.skip("saturate is not applicable to one channel (test_saturate_refuses_grey_images)")
    dist = [float((corrupt(x, name, s, generator=generator(0, name, s)) - x).abs().mean()) for s in (1, 3, 5)]
    assert dist[2] > dist[0]
    assert dist[2] > 0.01


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_per_image_for_deterministic_ones(name):
    if name not in DETERMINISTIC:
        pytest.skip("random corruptions draw per batch")
    x = smooth_images(3, 3, 24)
    whole = corrupt(x, name, 3)
    parts = torch.cat([corrupt(x[i : i + 1], name, 3) for i in range(3)])
    diff = (whole - parts).abs()
    # other batch shapes may take other float kernels; the JPEG codec floors float32 matrix products, so a
    # product on a DESCALE boundary may move one level (1/255) on a rare pixel (its bound against Pillow)
    tol = 1 / 255 + 1e-6 if name == "jpeg-compression" else 1e-6
    assert diff.max() <= tol and (diff > 1e-6).float().mean() < 1e-3


def test_bad_inputs_raise_input_error():
    x = smooth_images(1, 3, 16)
    with pytest.raises(InputError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(InputError, match="severity"):
        corrupt(x, "fog", 0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        corrupt(x * 2, "fog", 1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        corrupt(torch.full_like(x, float("nan")), "fog", 1)
    with pytest.raises(InputError, match="channels"):
        corrupt(torch.rand(1, 2, 16, 16), "fog", 1)
    with pytest.raises(InputError, match="shape"):
        corrupt(torch.rand(3, 16, 16), "fog", 1)
    with pytest.raises(UnknownNameError, match="gaussian-noise"):
        corrupt(x, "gaussian-nois", 1)
    with pytest.raises(InputError):
        create("fog", reference_size=0)
    with pytest.raises(InputError, match="table"):
        create("fog", table="cifar-100-c")


def test_saturate_refuses_grey_images():
    sat = create("saturate")
    reason = sat.not_applicable(8, 1, 1)
    assert reason is not None and reason == sat.not_applicable(224, 1, 5)
    assert all(sat.applicable(size, 3, s) for size in (8, 224) for s in (1, 5))
    with pytest.raises(InputError, match="saturate is not applicable here: a one-channel"):
        sat(smooth_images(1, 1, 8), 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    x = smooth_images(2, 3, 32)
    cpu = corrupt(x, name, 3, generator=generator(0, name))
    gpu = corrupt(x.cuda(), name, 3, generator=generator(0, name))
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().mean() < 2e-3
