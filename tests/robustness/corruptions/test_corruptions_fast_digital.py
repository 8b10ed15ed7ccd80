"""The torch JPEG codec (`_jpeg.py`) and the gather-based pixelate against Pillow, which ImageNet-C calls."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mlsafety.core import InputError
from mlsafety.robustness.corruptions import CORRUPTIONS, create
from mlsafety.robustness.corruptions._jpeg import jpeg_round_trip, pillow_jpeg_mosaic, pillow_round_trip, quant_table


def photo_like(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """8-bit images (h, w, c) with smooth shapes, edges and fine texture, as JPEG meets in photographs."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, c, 5, 5, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    edge = (torch.arange(w).view(1, 1, 1, w) > w // 3).float() * 0.3
    x = 0.55 * x + edge + 0.15 * torch.rand(1, c, h, w, generator=g)
    return (x.clamp(0, 1)[0] * 255).round().byte().permute(1, 2, 0).numpy()


def pillow_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(arr.shape)


def torch_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    y = jpeg_round_trip(x, quality)
    return (y[0].permute(1, 2, 0) * 255).round().byte().numpy()


def test_quant_table_follows_libjpeg_scaling():
    base = quant_table(50)  # scale 100: the standard table itself
    assert base[:8] == [16, 11, 10, 16, 24, 40, 51, 61] and base[-1] == 99
    assert quant_table(25) == [min(2 * t, 255) for t in base]  # scale 200
    assert quant_table(75) == [max((t * 50 + 50) // 100, 1) for t in base]  # scale 200 - 150
    assert quant_table(7)[0] == (16 * 714 + 50) // 100 and max(quant_table(7)) == 255  # 5000 // 7, clamped
    assert quant_table(100) == [1] * 64
    assert quant_table(25, chroma=True)[:4] == [34, 36, 48, 94]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("h", "w"), [(8, 8), (32, 32), (30, 45), (224, 224)])
def test_torch_jpeg_matches_pillow(channels, h, w):
    """libjpeg's integer DCTs and fixed-point colour: Pillow's output, up to rare one-level differences
    where float32 rounding meets a DESCALE boundary (none on these images when written)."""
    diffs = []
    for severity, quality in enumerate(CORRUPTIONS.get("jpeg-compression").levels):
        arr = photo_like(channels, h, w, seed=severity)
        ref = pillow_jpeg(arr, quality).astype(np.int16)
        diff = np.abs(torch_jpeg(arr, quality).astype(np.int16) - ref)
        assert diff.max() <= 1, f"quality {quality}: {diff.max()} levels"
        diffs.append(diff.ravel())
    diff = np.concatenate(diffs)
    assert (diff == 0).mean() > 0.999
    # the corruption is real: far from the clean image
    arr = photo_like(channels, h, w)
    assert np.abs(torch_jpeg(arr, 7).astype(np.int16) - arr).mean() > 1.0


def test_torch_jpeg_of_flat_image_is_flat():
    x = torch.full((2, 3, 16, 24), 0.3)
    x[1] = torch.tensor([0.8, 0.2, 0.5]).view(3, 1, 1)
    y = jpeg_round_trip(x, 10)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))  # one DC per block, no ringing
    ref = pillow_jpeg((x[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), 10)
    assert np.abs(y[1].permute(1, 2, 0).numpy() * 255 - ref).max() <= 1.0 + 1e-3


def test_torch_jpeg_is_the_default_and_runs_in_float64():
    assert create("jpeg-compression").encoder == "torch"
    arr = photo_like(3, 24, 24)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255
    y = create("jpeg-compression")(x, 3)
    assert y.dtype == torch.float64
    assert torch.allclose(y.float(), create("jpeg-compression")(x.float(), 3), atol=1.01 / 255)


def test_unknown_encoder_raises():
    with pytest.raises(InputError, match="encoder"):
        create("jpeg-compression", encoder="opencv")


def _pillow_pixelate(arr: np.ndarray, c: float) -> np.ndarray:
    pil = Image.fromarray(arr)
    w, h = pil.size
    return np.asarray(pil.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.NEAREST))


@pytest.mark.parametrize(("h", "w"), [(30, 45), (224, 224), (1, 7)])
def test_pixelate_matches_pillow_on_any_shape(h, w):
    pixelate = create("pixelate")
    arr = photo_like(3, h, w)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    for severity in range(1, 6):
        c = pixelate.level_for((h, w), severity)
        if int(h * c) == 0 or int(w * c) == 0:
            continue  # Pillow cannot resize to zero pixels
        y = pixelate(x, severity)[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(y - _pillow_pixelate(arr, c)).max() <= 1.0 + 1e-3  # Pillow rounds the shrunk image


@pytest.mark.parametrize("severity", [1, 5])
def test_elastic_field_drawn_smaller_keeps_published_displacement_size(severity):
    """At 224 px the field is drawn at 112 px and enlarged; displacements keep the full-size field's spread."""
    from scipy.ndimage import gaussian_filter

    size, n = 224, 8
    alpha = CORRUPTIONS.get("elastic-transform").levels[severity - 1]
    ramp = torch.linspace(0.1, 0.9, size).view(1, 1, 1, size).expand(n, 1, size, size).contiguous()
    y = create("elastic-transform")(ramp, severity, torch.Generator().manual_seed(severity))
    shift = ((y - ramp) / (0.8 / (size - 1)))[..., 40:-40, 40:-40]  # horizontal displacement, away from borders
    # the published field: uniform(-0.005 H, 0.005 H) per pixel, Gaussian blur sigma 0.01 H (truncate 3), times alpha
    noise = np.random.default_rng(severity).uniform(-0.005 * size, 0.005 * size, (n, size, size))
    ref = gaussian_filter(noise, sigma=(0, 0.01 * size, 0.01 * size), truncate=3.0, mode="mirror") * alpha
    assert abs(float(shift.std()) / ref.std() - 1) < 0.04, float(shift.std()) / ref.std()


def test_torch_jpeg_clips_unless_asked_not_to():
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0, 4:12, 4:12] = 1.0  # a saturated red square on a blue and black ground: the colour overshoots
    x[:, 2, :, :8] = 1.0
    raw = jpeg_round_trip(x, 7, clip=False)
    assert float(raw.max()) > 1.0 or float(raw.min()) < 0.0
    assert torch.equal(jpeg_round_trip(x, 7), raw.clamp(0, 1))


def test_pillow_mosaic_equals_per_image_round_trips():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 8, 16), dtype=np.uint8)  # several mosaic rows and a padded last row
    want = np.stack([pillow_jpeg(img, 10) for img in images])
    assert np.array_equal(pillow_jpeg_mosaic(images, 10), want)
    # the tensor entry point takes grey block-aligned batches through the mosaic, colour ones image by image
    x = torch.from_numpy(images[:5, None]).double() / 255
    assert torch.equal(pillow_round_trip(x, 10), torch.from_numpy(want[:5, None]).double() / 255)
    rgb = photo_like(3, 9, 13)
    back = pillow_round_trip(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, 25)
    assert np.array_equal((back[0].permute(1, 2, 0) * 255).round().byte().numpy(), pillow_jpeg(rgb, 25))
