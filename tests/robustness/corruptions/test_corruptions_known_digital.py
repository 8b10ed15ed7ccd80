"""Known answers: each corruption against its published definition, a peer implementation or an invariant."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mlsafety.core import generator
from mlsafety.robustness.corruptions import CORRUPTIONS, corrupt, create
from tests.corruption_images import const, uint8_images


# -- noise ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 2, 3])
def test_gaussian_noise_has_published_std(severity):
    c = create("gaussian-noise").level_for(64, severity)  # Tiny-ImageNet-C at 64 px
    x = const(0.5, n=4, size=64)
    y = corrupt(x, "gaussian-noise", severity, generator=generator(0))
    noise = y - x  # clipping at 0.5 +- 2.8 sigma is negligible for these severities
    assert abs(float(noise.std()) - c) < 0.03 * c
    assert abs(float(noise.mean())) < 0.01


def test_shot_noise_is_poisson():
    level = create("shot-noise").level_for(64, 1)
    x = const(0.3, n=4, size=64)
    y = corrupt(x, "shot-noise", 1, generator=generator(0))
    counts = y * level
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # whole photon counts
    assert abs(float(counts.mean()) - 0.3 * level) < 0.02 * 0.3 * level
    assert abs(float(counts.var()) - 0.3 * level) < 0.05 * 0.3 * level  # Poisson: variance = mean


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_sets_published_share_to_zero_and_one(severity):
    amount = create("impulse-noise").level_for(64, severity)
    x = const(0.5, n=4, size=64)
    y = corrupt(x, "impulse-noise", severity, generator=generator(0))
    assert set(torch.unique(y).tolist()) == {0.0, 0.5, 1.0}
    for v in (0.0, 1.0):
        share = float((y == v).float().mean())
        assert abs(share - amount / 2) < 0.1 * amount / 2 + 0.002


def test_speckle_noise_is_multiplicative():
    c = create("speckle-noise").level_for(64, 1)
    x = const(0.25, n=4, size=64)
    y = corrupt(x, "speckle-noise", 1, generator=generator(0))
    assert abs(float(((y - x) / x).std()) - c) < 0.03 * c
    assert torch.equal(corrupt(const(0.0), "speckle-noise", 5), const(0.0))  # black stays black


# -- digital -------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_matches_scikit_image_hsv(severity):
    from skimage.color import hsv2rgb, rgb2hsv

    c = create("brightness").level_for(16, severity)  # CIFAR-10-C below 46 px
    x = uint8_images(2, 3, 16)
    x[0, :, 0, 0] = 0.0  # black pixel
    x[0, :, 0, 1] = 0.5  # grey pixel
    y = corrupt(x, "brightness", severity)
    for i in range(2):
        hsv = rgb2hsv(x[i].permute(1, 2, 0).numpy().astype(np.float64))
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        ref = np.clip(hsv2rgb(hsv), 0, 1)
        assert np.abs(y[i].permute(1, 2, 0).numpy() - ref).max() < 1e-5
    grey_img = uint8_images(1, 1, 16)
    assert torch.allclose(corrupt(grey_img, "brightness", severity), (grey_img + c).clamp(0, 1))


@pytest.mark.parametrize("severity", [1, 3, 4, 5])
def test_saturate_matches_scikit_image_hsv(severity):
    from skimage.color import hsv2rgb, rgb2hsv

    a, b = create("saturate").level_for(16, severity)
    x = uint8_images(2, 3, 16)
    x[0, :, 0, 0] = 0.0
    x[0, :, 0, 1] = 0.5
    y = corrupt(x, "saturate", severity)
    for i in range(2):
        hsv = rgb2hsv(x[i].permute(1, 2, 0).numpy().astype(np.float64))
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
        ref = np.clip(hsv2rgb(hsv), 0, 1)
        assert np.abs(y[i].permute(1, 2, 0).numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("severity", [1, 5])
def test_contrast_closed_form(severity):
    c = create("contrast").level_for(16, severity)
    x = uint8_images(2, 3, 16)
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", severity), ((x - mean) * c + mean).clamp(0, 1), atol=1e-6)


def _pillow_pixelate(img: np.ndarray, c: float) -> np.ndarray:
    pil = Image.fromarray(img)
    w, h = pil.size
    return np.asarray(pil.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.NEAREST))


@pytest.mark.parametrize("size", [8, 32, 37])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_matches_pillow_and_reduces_resolution(size, severity):
    c = create("pixelate").level_for(size, severity)
    x = uint8_images(1, 3, size)
    y = corrupt(x, "pixelate", severity)[0]
    ref = _pillow_pixelate((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), c)
    assert np.abs(y.permute(1, 2, 0).numpy() * 255 - ref).max() <= 1.0 + 1e-3  # Pillow rounds each pass to 8 bits
    blocks = torch.unique_consecutive(y[0], dim=1).shape[1]  # distinct columns = the reduced width
    assert blocks == int(size * c)


@pytest.mark.parametrize("encoder", ["torch", "pillow"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_jpeg_matches_pillow_round_trip(encoder, channels, severity):
    quality = create("jpeg-compression").level_for(40, severity)  # CIFAR-10-C qualities
    x = uint8_images(2, channels, 40)
    y = create("jpeg-compression", encoder=encoder)(x, severity)
    for i in range(2):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr[..., 0] if channels == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=quality)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(arr.shape)
        diff = np.abs((y[i].permute(1, 2, 0).numpy() * 255).round() - ref)
        # Pillow's own codec is exact; the torch one floors float32 matrix products, whose rounding depends
        # on the CPU's kernels: one level where a product meets a DESCALE boundary (the codec's documented bound)
        assert diff.max() <= (1 if encoder == "torch" else 0) and (diff == 0).mean() > 0.999


@pytest.mark.parametrize("size", [64, 224])
def test_elastic_displacement_is_bounded_and_smooth(size):
    ramp = torch.linspace(0.1, 0.9, size).view(1, 1, 1, size).expand(2, 1, size, size).contiguous()
    alpha = CORRUPTIONS.get("elastic-transform").levels[4]
    y = corrupt(ramp, "elastic-transform", 5, generator=generator(0))
    step = 0.8 / (size - 1)
    shift = (y - ramp)[..., 2:-2, 2:-2] / step  # horizontal displacement in pixels, away from mirrored borders
    assert float(shift.abs().max()) <= alpha * 0.005 * size + 1e-3
    # the same displacement relative to the image size at every size: about 1% of the side at severity 5
    assert 0.005 < float(shift.abs().mean()) / size < 0.02
    if size == 224:  # at the reference size the field is smooth: neighbouring pixels move together
        rough = (shift[..., 1:, :] - shift[..., :-1, :]).abs().mean()
        assert float(rough) < 0.5 * float(shift.abs().mean())
    assert torch.allclose(corrupt(const(0.3), "elastic-transform", 5), const(0.3), atol=1e-6)
