"""Scaling-law fits recover planted alpha, beta and peaks; observed peaks and size trends."""

from __future__ import annotations

import math

import pytest
import torch

from mlsafety.core import InputError, generator
from mlsafety.monitoring.proxy_gaming import fit_scaling_law, observed_peak, predict, size_trend

D = torch.linspace(0.0, 3.0, 31, dtype=torch.float64)


@pytest.mark.parametrize(("form", "peak"), [("bon", 1.2 / 0.6), ("rl", math.exp(1.2 / 0.3 - 1))])
def test_noiseless_curve_recovers_alpha_beta_and_peak(form: str, peak: float) -> None:
    reward = predict(form, D, 1.2, 0.3) + 5.0  # an offset: the initial policy's gold, removed by relative
    fit = fit_scaling_law(D, reward, form, n_boot=200)
    assert fit.alpha.value == pytest.approx(1.2, abs=1e-9)
    assert fit.beta.value == pytest.approx(0.3, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.peak.value == pytest.approx(peak, rel=1e-9)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_noisy_seeds_intervals_contain_the_truth(form: str) -> None:
    g = generator(0, "fits-noisy", form)
    clean = predict(form, D, 1.0, 0.35)
    curves = clean + 0.05 * torch.randn(12, D.numel(), generator=g, dtype=torch.float64)
    curves[:, 0] = 0.0
    fit = fit_scaling_law(D, curves, form, n_boot=500)
    assert fit.alpha.ci_low <= 1.0 <= fit.alpha.ci_high
    assert fit.beta.ci_low <= 0.35 <= fit.beta.ci_high
    truth = 1.0 / 0.7 if form == "bon" else math.exp(1.0 / 0.35 - 1)
    assert fit.peak.ci_low <= truth <= fit.peak.ci_high
    assert fit.alpha.n == 12
    assert fit.r2 > 0.95


def test_wrong_form_fits_worse_than_the_right_one() -> None:
    reward = predict("rl", D, 1.0, 0.6)
    assert fit_scaling_law(D, reward, "rl", n_boot=50).r2 > fit_scaling_law(D, reward, "bon", n_boot=50).r2


def test_observed_peak_of_planted_parabolas() -> None:
    peaks = torch.tensor([1.0, 1.3, 1.6, 1.9], dtype=torch.float64)
    curves = torch.stack([D * (2 * p - D) for p in peaks])  # maximum at d = p
    obs = observed_peak(D, curves, n_boot=300)
    torch.testing.assert_close(obs.per_seed, peaks)  # parabolic refinement is exact for a parabola
    assert bool(obs.interior.all()) and obs.censored == 0
    assert obs.d.value == pytest.approx(1.45)
    assert obs.d.ci_low < 1.45 < obs.d.ci_high
    assert obs.reward.value == pytest.approx(float((peaks**2).mean()), abs=0.02)


def test_size_trend_recovers_planted_slopes() -> None:
    sizes = [30, 100, 300, 1000, 3000]
    curves = [predict("bon", D, 0.5 + 0.1 * math.log(n), 0.4 - 0.02 * math.log(n)) for n in sizes]
    fits = [fit_scaling_law(D, c, n_boot=20) for c in curves]
    trend = size_trend(sizes, fits)
    assert trend.alpha_slope.value == pytest.approx(0.1, abs=1e-9)
    assert trend.beta_slope.value == pytest.approx(-0.02, abs=1e-9)
    assert math.isnan(trend.alpha_slope.ci_low)  # one curve per N: no replicates, no interval


def _noisy_trend_fits(rep: int, n_boot: int) -> list:  # type: ignore[type-arg]
    sizes = [30, 100, 300, 1000, 3000]
    fits = []
    for k, n in enumerate(sizes):
        g = generator(rep, "size-trend-noise", k)
        curves = predict("bon", D, 0.5 + 0.1 * math.log(n), 0.3) + 0.2 * torch.randn(8, D.numel(), generator=g,
                                                                                    dtype=torch.float64)  # fmt: skip
        curves[:, 0] = 0.0
        fits.append(fit_scaling_law(D, curves, n_boot=n_boot, seed=k))
    return fits


def test_size_trend_interval_carries_the_seed_noise_of_each_alpha() -> None:
    # alpha is EXACTLY linear in log N, so a bootstrap over the 5 sizes would see no spread; the nested
    # bootstrap must carry the per-N seed noise: its width matches the slope's sd over 40 fresh worlds.
    sizes = [30, 100, 300, 1000, 3000]
    trend = size_trend(sizes, _noisy_trend_fits(0, 400))
    half = (trend.alpha_slope.ci_high - trend.alpha_slope.ci_low) / 2
    slopes = torch.tensor([size_trend(sizes, _noisy_trend_fits(r, 1)).alpha_slope.value for r in range(1, 41)])
    assert float(slopes.mean()) == pytest.approx(0.1, abs=0.01)  # the point slope is unbiased
    assert 0.5 < half / (1.96 * float(slopes.std())) < 1.5


def test_a_single_curve_gets_no_interval() -> None:
    fit = fit_scaling_law(D, predict("bon", D, 1.0, 0.3), n_boot=50)
    assert fit.boot is None and math.isnan(fit.alpha.ci_low) and math.isnan(fit.peak.ci_high)


def test_predicted_peaks_outside_the_forms_range() -> None:
    from mlsafety.monitoring.proxy_gaming.fits import FORMS

    a, b = torch.tensor([-0.5, 1.0, 1.0, 60.0]), torch.tensor([0.3, -0.1, 0.3, 1.0])
    bon = FORMS["bon"][1](a, b)
    assert bon[0] == 0.0 and bon[1] == math.inf and bon[2] == pytest.approx(1.0 / 0.6)  # alpha <= 0: falls from 0
    rl = FORMS["rl"][1](a, b)
    assert rl[0] == pytest.approx(math.exp(-0.5 / 0.3 - 1)) and rl[1] == math.inf and rl[3] == math.inf  # e^59: none


def test_observed_peak_leaves_out_seeds_still_rising_at_the_grid_end() -> None:
    peaks = torch.tensor([1.0, 1.6, 9.0], dtype=torch.float64)  # the last peaks beyond d = 3
    curves = torch.stack([D * (2 * p - D) for p in peaks])
    obs = observed_peak(D, curves, n_boot=200)
    assert obs.interior.tolist() == [True, True, False] and obs.censored == 1
    assert obs.d.value == pytest.approx(1.3) and obs.d.n == 2
    one = observed_peak(D, curves[1:], n_boot=50)  # one interior seed: its peak, no interval
    assert one.d.value == pytest.approx(1.6) and math.isnan(one.d.ci_low) and one.d.n == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fit_scaling_law(D, D, "cubic"), "unknown functional form"),
        (lambda: fit_scaling_law(D[:2], D[:2]), "at least 3 points"),
        (lambda: fit_scaling_law(D, D[:-1]), "matching shapes"),
        (lambda: fit_scaling_law(-D, D), ">= 0"),
        (lambda: size_trend([10], []), "one fit per size"),
    ],
)
def test_bad_input_is_one_line(call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_a_curve_without_a_peak_gets_an_infinite_upper_end() -> None:
    g = generator(5, "fits-no-peak")
    curves = 0.5 * D + 0.2 * torch.randn(6, D.numel(), generator=g, dtype=torch.float64)  # beta near 0
    fit = fit_scaling_law(D, curves, "bon", n_boot=400)
    assert not math.isnan(fit.peak.ci_low) and not math.isnan(fit.peak.ci_high)
    assert fit.peak.ci_high == math.inf or fit.peak.ci_high > 10
