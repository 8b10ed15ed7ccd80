"""The fast paths of the corruption filters against brute-force versions of the same operations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlsafety.robustness.corruptions import _filters, _fractal, _warps
from mlsafety.robustness.corruptions.blur import disk_kernel


def planes(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def direct_correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Every channel correlated with ``kernel`` by ``conv2d`` on a padded copy (the definition)."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    y = F.pad(x.reshape(n * c, 1, h, w), [kw // 2, kw // 2, kh // 2, kh // 2], mode=mode)
    return F.conv2d(y, kernel.view(1, 1, kh, kw).to(x.dtype)).reshape(n, c, h, w)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize(("n", "c", "h", "w"), [(1, 1, 64, 64), (2, 3, 70, 97), (3, 1, 81, 64)])
@pytest.mark.parametrize("radius", [2.5, 7.0])
def test_fft_filter_equals_direct_correlation(mode, n, c, h, w, radius):
    x = planes(n, c, h, w)  # odd plane counts too: the last complex plane carries one real plane
    kernel = disk_kernel(radius, 0.5, x)
    kernel[0, :] *= 1.5  # not symmetric: a flipped kernel (convolution instead of correlation) fails
    kernel = kernel / kernel.sum()
    assert _filters._fft_pays(kernel.numel(), x)  # the FFT path runs
    got = _filters.filter2d(x, kernel, mode=mode)
    assert torch.allclose(got, direct_correlate(x, kernel, mode), atol=1e-10)


def test_small_kernels_use_shifted_adds_equal_to_direct():
    x = planes(2, 3, 20, 17)
    kernel = torch.arange(9.0, dtype=torch.float64).view(3, 3) / 36
    assert torch.allclose(_filters.filter2d(x, kernel), direct_correlate(x, kernel, "reflect"), atol=1e-12)


@pytest.mark.parametrize(("sigma", "fft"), [(1.0, False), (2.5, False), (4.0, True), ((6.0, 2.0), True)])
def test_gaussian_blur_fft_and_shifted_adds_agree_with_scipy(sigma, fft):
    from scipy.ndimage import gaussian_filter

    x = planes(1, 3, 96, 80)
    sy, sx = (sigma, sigma) if isinstance(sigma, float) else sigma
    taps = 2 * int(4.0 * sy + 0.5) + 1 + 2 * int(4.0 * sx + 0.5) + 1
    assert _filters._fft_pays(taps, x) == fft  # both paths are checked
    for mode, scipy_mode in (("replicate", "nearest"), ("reflect", "mirror")):
        got = _filters.gaussian_blur(x, sigma, mode=mode).numpy()
        ref = gaussian_filter(x.numpy(), sigma=(0, 0, sy, sx), mode=scipy_mode, truncate=4.0)
        assert np.abs(got - ref).max() < 1e-10


def test_pad_into_matches_torch_pad_and_fills_the_fft_margin():
    x = planes(2, 1, 9, 7)[:, 0]
    for mode in ("reflect", "replicate"):
        dst = torch.full((2, 16, 12), float("nan"), dtype=x.dtype)
        _filters._pad_into(dst, x, 3, 2, mode)
        assert torch.equal(dst, F.pad(x[:, None], [2, 3, 3, 4], mode=mode)[:, 0])
    dst = torch.full((2, 40, 12), float("nan"), dtype=x.dtype)  # a bottom margin longer than the image
    _filters._pad_into(dst, x, 3, 2, "reflect")
    assert torch.isfinite(dst).all()
    assert torch.equal(dst[:, : 9 + 6, :11], F.pad(x[:, None], [2, 2, 3, 3], mode="reflect")[:, 0])
    dst = torch.full((2, 40, 12), float("nan"), dtype=x.dtype)  # a kernel longer than the image: replicate
    _filters._pad_into(dst, x, 10, 2, "reflect")
    assert torch.equal(dst, F.pad(x[:, None], [2, 3, 10, 21], mode="replicate")[:, 0])


def test_fast_sizes_are_small_smooth_and_large_enough():
    for v in range(1, 600):
        size = _filters._fast_size(v)
        assert size >= v and size % 4 == 0 and size < max(8, 1.25 * v + 4)
        rest = size
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1


def reference_plasma(n: int, mapsize: int, decay: float, g: torch.Generator) -> np.ndarray:
    """ImageNet-C's ``plasma_fractal`` (NumPy, ``np.roll``), fed the same uniform draws level by level."""
    m = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half, k = step // 2, mapsize // step
        noise = torch.empty(3, n, k, k, dtype=torch.float64).uniform_(-wibble * wibble, wibble * wibble, generator=g)
        noise = noise.numpy()  # wibble * U(-wibble, wibble), ImageNet-C's displacement
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:mapsize:step, half:mapsize:step] = sq / 4 + noise[0]
        dr = m[:, half:mapsize:step, half:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:mapsize:step, half:mapsize:step] = lt / 4 + noise[1]
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half:mapsize:step, 0:mapsize:step] = tt / 4 + noise[2]
        step //= 2
        wibble /= decay
    return m


@pytest.mark.parametrize(("mapsize", "decay"), [(1, 2.0), (2, 2.0), (16, 1.4), (64, 2.0)])
def test_plasma_matches_the_reference_diamond_square(mapsize, decay):
    like = torch.zeros((), dtype=torch.float64)
    got = _fractal.plasma_raw(3, mapsize, decay, torch.Generator().manual_seed(5), like)
    ref = reference_plasma(3, mapsize, decay, torch.Generator().manual_seed(5))
    assert np.allclose(got.numpy(), ref, rtol=1e-12, atol=1e-9)
    unit = _fractal.plasma_fractal(3, mapsize, decay, torch.Generator().manual_seed(5), like)
    if mapsize > 1:
        span = ref.max(axis=(1, 2), keepdims=True) - ref.min(axis=(1, 2), keepdims=True)
        assert np.allclose(unit.numpy(), (ref - ref.min(axis=(1, 2), keepdims=True)) / span, atol=1e-12)


def test_plasma_float32_follows_float64():
    g32, g64 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = _fractal.plasma_fractal(2, 64, 1.5, g32, torch.zeros(()))
    b = _fractal.plasma_fractal(2, 64, 1.5, g64, torch.zeros((), dtype=torch.float64))
    assert a.dtype == torch.float32
    assert b.dtype == torch.float64
    assert math.isclose(float(a.amin()), 0.0, abs_tol=1e-6) and math.isclose(float(a.amax()), 1.0, abs_tol=1e-6)


# -- weather fast paths --------------------------------------------------------------------------
def test_dilate3_mask_is_the_3x3_maximum_filter():
    mask = torch.rand(2, 1, 13, 11, generator=torch.Generator().manual_seed(3)) < 0.1
    want = F.max_pool2d(F.pad(mask.double(), [1, 1, 1, 1], mode="replicate"), 3, stride=1) > 0
    assert torch.equal(_filters.dilate3_mask(mask), want)


@pytest.mark.parametrize("reach", [1, 3, 20])
def test_spatter_edge_distance_is_the_truncated_chessboard_distance(reach):
    from scipy.ndimage import distance_transform_cdt, grey_dilation, grey_erosion

    from mlsafety.robustness.corruptions.weather import edge_distance

    g = torch.Generator().manual_seed(reach)
    wet = F.interpolate(torch.rand(2, 1, 6, 7, generator=g), size=(40, 45), mode="bilinear") > 0.6
    got = edge_distance(wet, reach, torch.float64)
    for i in range(2):
        w = wet[i, 0].numpy().astype(np.uint8)
        edge = (grey_dilation(w, size=3, mode="nearest") - grey_erosion(w, size=3, mode="nearest")) > 0
        assert edge.any()
        want = np.minimum(distance_transform_cdt(~edge, metric="chessboard"), reach)
        assert np.array_equal(got[i, 0].numpy(), want.astype(np.float64))


def test_frost_blend_equals_texture_crops():
    from mlsafety.core import generator
    from mlsafety.robustness.corruptions import create
    from mlsafety.robustness.corruptions.weather import frost_texture

    x = planes(5, 3, 48, 40).float()
    frost = create("frost")
    a, b = frost.level_for((48, 40), 2)  # CIFAR-10-C's (short side 40 < 46), lengths scaled by 40 / 32
    got = frost(x, 2, generator(0, "frost"))
    tex = frost_texture(5, (48, 40), 40 / 32, generator(0, "frost"), x)  # the same draws, in the same order
    assert torch.allclose(got, (a * x + b * tex).clamp(0, 1), atol=1e-6)
    assert len({float(t.mean()) for t in tex}) == 5  # each image its own crop


@pytest.mark.parametrize("length", [0.3, 3.0, 12.0])
def test_frost_streaks_are_the_brightest_motion_blur_of_the_seeds(length):
    from mlsafety.robustness.corruptions.weather import streaks

    g = torch.Generator().manual_seed(7)
    seeds = torch.zeros(3, 1, 48, 52, dtype=torch.float64)
    inner = torch.rand(3, 1, 20, 24, generator=g, dtype=torch.float64)
    seeds[:, :, 14:34, 14:38] = (inner < 0.05) * inner  # at least `length` from every border
    angles = torch.rand(4, 3, generator=g, dtype=torch.float64) * 360 - 180
    want = torch.stack([_warps.motion_blur(seeds, length, 5.0, a) for a in angles]).amax(dim=0)
    assert torch.allclose(streaks(seeds, length, 5.0, angles), want, atol=1e-12)
    edge = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    edge[0, 0, 0, 4] = 1.0  # a seed on the border: each copy once (replicated borders would repeat it)
    got = streaks(edge, 4.0, 2.0, torch.full((1, 1), -90.0, dtype=torch.float64))
    assert abs(float(got.sum()) - 1.0) < 1e-12 and float(got[0, 0, :5, 4].min()) > 0
    assert float(_warps.motion_blur(edge, 4.0, 2.0, torch.tensor([-90.0])).sum()) > 1.5


@pytest.mark.parametrize(
    "name",
    ["defocus-blur", "glass-blur", "motion-blur", "zoom-blur", "gaussian-blur", "snow", "frost", "fog", "spatter"],
)
def test_channels_last_and_strided_inputs_give_the_same_result(name):
    from mlsafety.core import generator
    from mlsafety.robustness.corruptions import corrupt

    x = planes(2, 3, 72, 80).float()
    ref = corrupt(x, name, 4, generator(0, name))
    strided = torch.zeros(2, 3, 72, 160)[..., ::2].copy_(x)
    for view in (x.contiguous(memory_format=torch.channels_last), strided):
        assert torch.allclose(corrupt(view, name, 4, generator(0, name)), ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_below_and_indicator_match_their_masked_definitions(dtype):
    x = torch.rand(3, 1, 17, 19, generator=torch.Generator().manual_seed(2), dtype=dtype)
    thr = 0.65
    x[0, 0, 0, :3] = torch.tensor([thr, thr, thr], dtype=dtype)  # exactly at the threshold: kept, not above
    x[0, 0, 1, 0] = torch.nextafter(torch.tensor(thr, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    want = x.masked_fill(x < thr, 0.0)
    assert torch.equal(_filters.zero_below_(x.clone(), thr), want)
    assert torch.equal(_filters.indicator(x, thr), (x > thr).to(dtype))
    kept = float(torch.tensor(thr, dtype=dtype))
    assert float(_filters.zero_below_(x.clone(), thr)[0, 0, 1, 0]) == 0.0 and float(want[0, 0, 0, 0]) == kept
