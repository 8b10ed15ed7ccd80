"""Best-of-n: exact order statistics against Monte Carlo and hand answers; the sample-reuse
estimator against brute-force enumeration of subsets."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from mlsafety.core import InputError, generator
from mlsafety.monitoring.proxy_gaming import (
    best_of_n_exact,
    best_of_n_from_samples,
    best_of_n_probs,
    bon_kl,
    mean_interval,
)


def test_hand_answer_two_draws_from_four() -> None:
    pi0 = torch.full((4,), 0.25)
    r = torch.arange(4.0)
    c = best_of_n_exact(pi0, r, r, [1, 2])
    assert float(c.gold[0]) == pytest.approx(1.5)
    assert float(c.gold[1]) == pytest.approx(2.125)  # sum_v v ((v+1)^2 - v^2) / 16
    assert float(c.kl_exact[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(c.kl[0]) == pytest.approx(0.0, abs=1e-12)


def test_all_tied_proxy_leaves_pi0_unchanged() -> None:
    pi0 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    probs = best_of_n_probs(pi0, torch.zeros(4), [1, 5, 50])
    torch.testing.assert_close(probs, pi0.expand(3, 4))


def test_exact_expectation_matches_monte_carlo_with_ties() -> None:
    g = generator(0, "bon-mc")
    k, n, draws = 30, 6, 40_000
    pi0 = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    pi0 = pi0 / pi0.sum()
    proxy = torch.randint(0, 8, (k,), generator=g).double()  # many ties
    gold = torch.randn(k, generator=g, dtype=torch.float64)
    exact = best_of_n_exact(pi0, proxy, gold, [n])
    idx = torch.multinomial(pi0, draws * n, replacement=True, generator=g).reshape(draws, n)
    jitter = torch.rand(draws, n, generator=g, dtype=torch.float64) * 0.5  # uniform tie-breaking
    pick = idx.gather(1, (proxy[idx] + jitter).argmax(1, keepdim=True)).squeeze(1)
    _, lo, hi = mean_interval(gold[pick].unsqueeze(1), confidence=0.999)
    assert float(lo[0]) <= float(exact.gold[0]) <= float(hi[0])
    _, lo, hi = mean_interval(proxy[pick].unsqueeze(1), confidence=0.999)
    assert float(lo[0]) <= float(exact.proxy[0]) <= float(hi[0])


def test_kl_closed_form_matches_exact_on_a_continuous_like_space() -> None:
    k = 20_000
    g = generator(1, "bon-kl")
    proxy = torch.randn(k, generator=g, dtype=torch.float64)  # distinct values: continuous-like
    ns = [1, 2, 4, 16, 64]
    c = best_of_n_exact(torch.full((k,), 1.0 / k, dtype=torch.float64), proxy, proxy, ns)
    torch.testing.assert_close(c.kl_exact, bon_kl(ns), atol=2e-3, rtol=0)
    assert float(c.kl_exact[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(bon_kl(64)) == pytest.approx(math.log(64) - 63 / 64)


def _brute_force(proxy: list[float], gold: list[float], n: int) -> float:
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [gold[i] for i in subset if proxy[i] == top]
        total += sum(tied) / len(tied)  # uniform tie-breaking among the subset's maxima
        count += 1
    return total / count


def test_sample_reuse_estimator_equals_enumeration_of_subsets() -> None:
    proxy = torch.tensor([[3.0, 1.0, 3.0, 2.0, 0.0, 1.0, 5.0], [0.5, -1.0, 2.0, 2.0, 2.0, 0.0, 1.0]])
    gold = torch.tensor([[1.0, -2.0, 4.0, 0.5, 3.0, 1.5, -1.0], [2.0, 0.0, -3.0, 1.0, 5.0, 2.5, 0.25]])
    ns = list(range(1, 8))
    est = best_of_n_from_samples(proxy, gold, ns)
    for row in range(2):
        want = [_brute_force(proxy[row].tolist(), gold[row].tolist(), n) for n in ns]
        torch.testing.assert_close(est.gold[row], torch.tensor(want, dtype=torch.float64))
        want_p = [_brute_force(proxy[row].tolist(), proxy[row].tolist(), n) for n in ns]
        torch.testing.assert_close(est.proxy[row], torch.tensor(want_p, dtype=torch.float64))


def test_sample_reuse_estimator_is_unbiased_for_exact_best_of_n(world) -> None:  # type: ignore[no-untyped-def]
    from mlsafety.monitoring.proxy_gaming import train_proxy

    proxy = train_proxy(world, 100, seed=0)
    g = generator(2, "bon-pool")
    prompts, m = 4000, 32
    idx = torch.multinomial(world.pi0, prompts * m, replacement=True, generator=g).reshape(prompts, m)
    est = best_of_n_from_samples(proxy[idx], world.gold[idx], [1, 4, 16, 32])
    exact = best_of_n_exact(world.pi0, proxy, world.gold, [1, 4, 16, 32])
    _, lo, hi = est.mean("gold", confidence=0.999)
    assert bool(((lo <= exact.gold) & (exact.gold <= hi)).all())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: best_of_n_exact(torch.full((3,), 1 / 3), torch.zeros(3), torch.zeros(4), [1]), "same shape"),
        (lambda: best_of_n_exact(torch.full((3,), 1 / 3), torch.zeros(3), torch.zeros(3), [0]), "n must"),
        (lambda: best_of_n_exact(torch.full((3,), 1 / 3), torch.zeros(3), torch.zeros(3), []), "empty"),
        (lambda: best_of_n_from_samples(torch.zeros(2, 4), torch.zeros(2, 4), [5]), "exceeds"),
        (lambda: best_of_n_from_samples(torch.zeros(0), torch.zeros(0), [1]), "empty"),
        (lambda: best_of_n_from_samples(torch.zeros(3), [0.0, 1.0, 2.0], [1]), "tensors"),  # type: ignore[arg-type]
        (lambda: best_of_n_probs(torch.tensor([0.5, 0.6]), torch.zeros(2), [1]), "sum to 1"),
    ],
)
def test_bad_input_is_one_line(call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_lm_pool_cache_is_keyed_on_the_weights_and_saved_atomically(tmp_path: Path) -> None:
    from mlsafety.core import LanguageModel
    from mlsafety.monitoring.proxy_gaming import lm as pg
    from tests.support.text import tiny_llama

    a, b = LanguageModel(tiny_llama(0)), LanguageModel(tiny_llama(1))
    cache = tmp_path / "samples.json"
    first = pg.sample_continuations(a, ["the movie was"], 3, 2, 1.0, cache=cache)
    assert first.settings.model == pg.weights_fingerprint(a) != pg.weights_fingerprint(b)
    other = pg.sample_continuations(b, ["the movie was"], 3, 2, 1.0, cache=cache)  # other weights: resampled
    assert other.settings.model == pg.weights_fingerprint(b) and other.continuations != first.continuations
    assert pg.Samples.load(cache).settings == other.settings and not (tmp_path / "samples.json.tmp").exists()


def test_best_of_n_from_samples_same_bits_on_one_and_two_threads() -> None:
    # a BLAS product of this shape (64 prompts x 4096 samples x 13 n) split its sums by the thread count
    g = torch.Generator().manual_seed(7)
    proxy = torch.randn(64, 4096, generator=g, dtype=torch.float64)
    gold = proxy + torch.randn(64, 4096, generator=g, dtype=torch.float64)
    ns = [2**k for k in range(13)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = best_of_n_from_samples(proxy, gold, ns)
        torch.set_num_threads(2)
        two = best_of_n_from_samples(proxy, gold, ns)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.gold, two.gold) and torch.equal(one.proxy, two.proxy)
    # and the prompts are summed alone: a prompt's estimate does not depend on the others in the call
    assert torch.equal(best_of_n_from_samples(proxy[5], gold[5], ns).gold[0], one.gold[5])


def _enumerate_best_of_n(pi0: list[float], proxy: list[float], n: int) -> torch.Tensor:
    """The best-of-n distribution by enumerating every ordered n-tuple of draws (ties broken uniformly among draws)."""
    out = torch.zeros(len(pi0), dtype=torch.float64)
    for draws in itertools.product(range(len(pi0)), repeat=n):
        weight = math.prod(pi0[i] for i in draws)
        top = max(proxy[i] for i in draws)
        winners = [i for i in draws if proxy[i] == top]
        for i in winners:
            out[i] += weight / len(winners)
    return out


def test_exact_best_of_n_equals_enumeration_with_ties_and_an_impossible_output() -> None:
    pi0 = torch.tensor([0.1, 0.25, 0.0, 0.3, 0.05, 0.3], dtype=torch.float64)
    proxy = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0, 1.0], dtype=torch.float64)  # a 3-way tie at the top, one impossible
    gold = torch.tensor([0.5, -1.0, 7.0, 2.0, 3.0, -0.25], dtype=torch.float64)
    ns = [1, 2, 3, 4]
    c = best_of_n_exact(pi0, proxy, gold, ns)
    for j, n in enumerate(ns):
        want = _enumerate_best_of_n(pi0.tolist(), proxy.tolist(), n)
        torch.testing.assert_close(c.probs[j], want, atol=1e-15, rtol=0)
        assert float(c.gold[j]) == pytest.approx(float(want @ gold), abs=1e-14)
        kl = sum(float(q) * math.log(float(q) / float(p)) for q, p in zip(want, pi0, strict=True) if q > 0)
        assert float(c.kl_exact[j]) == pytest.approx(kl, abs=1e-14)  # the discrete KL, not log n - (n - 1) / n
    assert float(c.kl_exact[3]) < float(c.kl[3]) - 0.05  # a coarse space with ties: below the closed form


def test_a_float32_pi0_is_renormalised_before_the_order_statistics() -> None:
    k = 3000
    pi0 = torch.full((k,), 1.0 / k)  # float32: sums to 1 only within about 1e-8
    r = torch.arange(k, dtype=torch.float64)
    c = best_of_n_exact(pi0, r, r, [1, 4096])
    torch.testing.assert_close(c.probs.sum(1), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(c.gold[0]) == pytest.approx((k - 1) / 2, abs=1e-9)


def test_mean_interval_by_hand() -> None:
    # column 0: 1, 2, 4: mean 7/3, sd sqrt(7/3) (n - 1 in the denominator), t(0.975, 2 df) = 4.302652729911275
    # column 1: 0, 0, 3: mean 1, sd sqrt(3)
    mean, lo, hi = mean_interval(torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 3.0]]))
    t = 4.302652729911275
    half = torch.tensor([t * math.sqrt(7 / 3) / math.sqrt(3), t], dtype=torch.float64)
    torch.testing.assert_close(mean, torch.tensor([7 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(lo, mean - half)
    torch.testing.assert_close(hi, mean + half)
    m1, lo1, hi1 = mean_interval(torch.tensor([[3.0, -1.0]]))
    assert torch.equal(m1, torch.tensor([3.0, -1.0], dtype=torch.float64))
    assert bool(lo1.isnan().all() and hi1.isnan().all())  # one row: no spread to measure, so no interval
