"""The exact Poisson sampler behind shot noise, against SciPy's Poisson distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mlsafety.core import generator
from mlsafety.robustness.corruptions.noise import poisson_counts


def chi_square_pvalue(samples: np.ndarray, rate: float) -> float:
    """Pearson's chi-square test of integer samples against Poisson(rate), merging bins expecting < 5."""
    n = samples.size
    top = int(samples.max()) + 1
    observed = np.bincount(samples.astype(np.int64), minlength=top + 1).astype(float)
    expected = stats.poisson.pmf(np.arange(top + 1), rate) * n
    expected[-1] += stats.poisson.sf(top, rate) * n  # the last bin holds the tail
    obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
    for ob, ex in zip(observed, expected, strict=True):
        o, e = o + ob, e + ex
        if e >= 5:
            obs_bins.append(o)
            exp_bins.append(e)
            o, e = 0.0, 0.0
    if e > 0:
        obs_bins[-1] += o
        exp_bins[-1] += e
    if len(obs_bins) < 2:
        return 1.0
    chi2 = float(((np.array(obs_bins) - np.array(exp_bins)) ** 2 / np.array(exp_bins)).sum())
    return float(stats.chi2.sf(chi2, len(obs_bins) - 1))


@pytest.mark.parametrize(
    ("scale", "x"),
    [
        (60.0, 1.0),  # rate 60, on the 8-bit grid (table inversion, long tail buckets)
        (25.0, 37 / 255),  # 8-bit value
        (3.0, 0.5),  # 0.5 = 127.5 / 255: grid rate plus a remainder
        (60.0, 1e-4),  # tiny rate 0.006: remainder only
        (12.0, 0.3137),  # off the grid
        (5.0, 2 / 255 - 1e-9),  # a hair below a grid value (float rounding of 2 / 255)
    ],
)
def test_poisson_counts_follow_poisson(scale, x):
    rate = scale * x
    samples = poisson_counts(torch.full((60_000,), x), scale, generator(0, "poisson", scale, x)).numpy()
    assert np.array_equal(samples, np.round(samples))
    assert chi_square_pvalue(samples, rate) > 1e-3
    se = np.sqrt(rate / samples.size)
    assert abs(samples.mean() - rate) < 5 * se + 1e-9
    assert abs(samples.var() - rate) < 6 * np.sqrt((rate + 2 * rate**2) / samples.size) + 1e-9


def test_poisson_counts_rate_zero_and_mixed_rates():
    assert torch.equal(poisson_counts(torch.zeros(1000), 60.0, generator(0)), torch.zeros(1000))
    # every value of a mixed batch has its own rate: sum the per-value Poisson log-likelihood ratio test
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 50, generator=g)
    x[:20] = (x[:20] * 255).round() / 255  # half 8-bit, half continuous
    reps = torch.stack([poisson_counts(x, 12.0, generator(i)) for i in range(200)])  # (200, 40, 50)
    mean, var = reps.mean(0), reps.var(0)
    rate = 12.0 * x
    z_mean = ((mean - rate) / (rate / 200).sqrt().clamp_min(1e-6))[rate > 0.5]
    assert abs(float(z_mean.mean())) < 0.1 and 0.8 < float(z_mean.std()) < 1.2  # unbiased, Poisson spread
    assert abs(float((var / rate.clamp_min(1e-6))[rate > 2].mean()) - 1) < 0.05  # variance = mean


def test_poisson_counts_use_only_the_given_generator():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    a = poisson_counts(x, 25.0, generator(3))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, poisson_counts(x, 25.0, generator(3)))
    assert not torch.equal(a, poisson_counts(x, 25.0, generator(4)))
    assert a.shape == x.shape and a.dtype == x.dtype


@pytest.mark.parametrize("p", [0.03, 0.27])
def test_bernoulli_positions_are_independent_trials(p):
    from mlsafety.robustness.corruptions.noise import bernoulli_positions

    n = 400_000
    positions, coin = bernoulli_positions(n, p, generator(0, "bernoulli", p), torch.empty(0))
    assert positions.dtype == torch.long and bool((positions[1:] > positions[:-1]).all())
    assert int(positions[0]) >= 0 and int(positions[-1]) < n
    hit = torch.zeros(n)
    hit[positions] = 1
    k = float(hit.sum())
    assert abs(k / n - p) < 5 * np.sqrt(p * (1 - p) / n)  # success rate
    pairs = float((hit[1:] * hit[:-1]).mean())
    assert abs(pairs - p * p) < 5 * np.sqrt(p * p / n)  # neighbours independent (no clumping or spacing)
    gaps = (positions[1:] - positions[:-1] - 1).numpy()  # geometric: P(gap = j) = (1 - p)^j p
    assert chi_square_geometric(gaps, p) > 1e-3
    assert abs(float(coin.mean()) - 0.5) < 5 * 0.5 / np.sqrt(k)  # fair coin for salt or pepper
    assert abs(float(coin[gaps.argsort()[: int(k) // 2]].mean()) - 0.5) < 6 * 0.5 / np.sqrt(k / 2)  # unrelated to gaps


def chi_square_geometric(gaps: np.ndarray, p: float) -> float:
    top = int(np.quantile(gaps, 0.999)) + 1
    observed = np.bincount(np.minimum(gaps, top), minlength=top + 1).astype(float)
    expected = stats.geom.pmf(np.arange(top + 1) + 1, p) * gaps.size
    expected[-1] = stats.geom.sf(top, p) * gaps.size
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    obs, exp = (obs, exp) if exp[-1] > 0 else (obs[:-1], exp[:-1])
    return float(stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), obs.size - 1))
