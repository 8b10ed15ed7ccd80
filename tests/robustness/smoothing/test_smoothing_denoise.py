"""The shipped digits denoisers: small, they help smoothing, and their recipe reproduces them."""

from __future__ import annotations

import pytest
import torch

from mlsafety import zoo
from mlsafety.core import generator
from mlsafety.robustness._denoise import ConvDenoiser, train_denoiser
from mlsafety.robustness.smoothing import SmoothedClassifier


@pytest.mark.parametrize("percent", [25, 50])
def test_shipped_denoiser_is_small_and_removes_noise(percent: int, digits_test) -> None:  # type: ignore[no-untyped-def]
    assert zoo.weights_path(f"digits-denoiser-{percent}").stat().st_size < 1_000_000
    den = zoo.load_model(f"digits-denoiser-{percent}")
    x = digits_test.x[:64]
    noisy = x + torch.randn(x.shape, generator=generator(0, "noise")) * percent / 100
    with torch.no_grad():
        assert ((den(noisy) - x) ** 2).mean() < 0.5 * ((noisy - x) ** 2).mean()


def test_denoised_smoothing_certifies_more_of_the_embedded_model(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_test.x[:30], digits_test.y[:30]
    den = zoo.load_model("digits-denoiser-50")
    plain = SmoothedClassifier(digits_model, 10, 0.5).certify(x, 32, 200, 0.01, generator=generator(0, "a"))
    denoised = SmoothedClassifier(digits_model, 10, 0.5, denoiser=den).certify(x, 32, 200, 0.01, generator=generator(0))
    assert denoised.certified_accuracy(y, 0.25).sum() > plain.certified_accuracy(y, 0.25).sum()


def test_train_denoiser_lowers_the_error_of_a_fresh_network(tiny_data) -> None:  # type: ignore[no-untyped-def]
    den = zoo.seeded_init(ConvDenoiser(width=8, depth=2), 0, "t")
    noisy = tiny_data.x + torch.randn(tiny_data.x.shape, generator=generator(0, "n")) * 0.25
    with torch.no_grad():
        before = ((den(noisy) - tiny_data.x) ** 2).mean()
    train_denoiser(den, tiny_data, 0.25, epochs=15)
    with torch.no_grad():
        after = ((den(noisy) - tiny_data.x) ** 2).mean()
    assert after < before and not den.training


@pytest.mark.slow
def test_recipe_reproduces_the_shipped_denoiser(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    path = zoo.train_model("digits-denoiser-50", out=tmp_path / "d.safetensors")
    ours, shipped = load_file(str(path)), load_file(str(zoo.weights_path("digits-denoiser-50")))
    assert ours.keys() == shipped.keys()
    assert all(torch.allclose(ours[k], shipped[k], atol=1e-6) for k in ours)
