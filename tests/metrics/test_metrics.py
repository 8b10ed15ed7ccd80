import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mlsafety.core import InputError
from mlsafety.metrics import (
    aupr_in,
    aupr_out,
    auroc,
    bootstrap_two_sample,
    clopper_pearson,
    clopper_pearson_lower,
    fpr_at_tpr,
    median,
    ood_metrics,
    proportion,
    wilson,
)

scores = st.lists(st.integers(0, 6), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(scores, scores, st.booleans())
def test_agree_with_sklearn_on_tied_and_random_scores(a, b, jitter):
    a_t, b_t = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if jitter:
        a_t = a_t + torch.linspace(0, 0.5, len(a), dtype=torch.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a_t.numpy(), b_t.numpy()]
    assert float(auroc(a_t, b_t)) == pytest.approx(roc_auc_score(y, s))
    assert float(aupr_out(a_t, b_t)) == pytest.approx(average_precision_score(y, s))
    assert float(aupr_in(a_t, b_t)) == pytest.approx(average_precision_score(1 - y, -s))
    fpr, tpr, _ = roc_curve(1 - y, -s)
    assert float(fpr_at_tpr(a_t, b_t, 0.95)) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_batched_rows_equal_single_calls():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 40, generator=g) + 1
    for fn in (auroc, aupr_in, aupr_out, fpr_at_tpr):
        batch = fn(a, b)
        for i in range(4):
            assert float(batch[i]) == pytest.approx(float(fn(a[i], b[i])))


def test_perfect_and_reversed_separator():
    a, b = torch.arange(10.0), torch.arange(10.0) + 100
    assert float(auroc(a, b)) == 1.0 and float(auroc(b, a)) == 0.0
    assert float(fpr_at_tpr(a, b)) == 0.0 and float(aupr_out(a, b)) == 1.0


def test_errors():
    with pytest.raises(InputError):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(InputError, match="NaN"):
        auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_auroc_counts_a_tie_as_one_half_by_hand():
    # every (OOD, ID) pair: 1 if the OOD score is higher, 1/2 if equal, 0 if lower
    assert float(auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0]))) == 0.5
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    assert float(auroc(a, b)) == (1 + 0.5 + 1 + 1) / 4  # pairs (1,0) (1,1) (2,0) (2,1)
    assert float(auroc(b, a)) == (0 + 0 + 0.5 + 0) / 4  # swapped: 1 - 0.875
    fused = ood_metrics(a, b, n_boot=1)
    assert fused["auroc"].value == 0.875


def _coverage(intervals: np.ndarray, ps: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    """P(interval of K holds p) for each p, from intervals (n + 1, 2) and pmf (p, k) of K ~ Bin(n, p)."""
    holds = (intervals[None, :, 0] <= ps[:, None]) & (ps[:, None] <= intervals[None, :, 1])
    return (pmf * holds).sum(1)


def test_two_sided_intervals_cover_exactly_by_binomial_sums():
    """Coverage P(lo(K) <= p <= hi(K)), K ~ Bin(n, p), summed exactly over K, on a grid of p: the exact
    (Clopper-Pearson) interval never falls below its level; Wilson's is approximate, and does (well
    known near p = 0 and 1). Fails if the two were swapped, a tail were lost (too narrow) or the level
    raised (too wide)."""
    for n, mean_below in ((7, 0.975), (40, 0.95)):  # the mean coverage at level 0.95 is 0.987 and 0.971
        ks = np.arange(n + 1)
        cp = np.array([clopper_pearson(int(k), n, 0.9) for k in ks])
        wi = np.array([wilson(int(k), n, 0.9) for k in ks])
        ps = np.linspace(0.002, 0.998, 499)
        pmf = stats.binom.pmf(ks[None, :], n, ps[:, None])  # (p, k)

        cov_cp, cov_wi = (_coverage(iv, ps, pmf) for iv in (cp, wi))
        assert cov_cp.min() >= 0.9 - 1e-12
        assert cov_cp.mean() < mean_below  # not wider than its level asks (0.95 instead of 0.9 is)
        assert cov_wi.min() < 0.9


def test_exact_intervals():
    lo, hi = clopper_pearson(7, 20)
    assert (lo, hi) == pytest.approx(tuple(stats.binomtest(7, 20).proportion_ci(method="exact")))
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    assert wilson(7, 20) == pytest.approx(tuple(stats.binomtest(7, 20).proportion_ci(method="wilson")))
    est = proportion(torch.tensor([True, False, True, True]))
    assert est.value == 0.75 and est.n == 4 and est.ci_low < 0.75 < est.ci_high


def test_one_sided_clopper_pearson_lower_bound() -> None:
    k = torch.tensor([0, 10, 100])
    lo = clopper_pearson_lower(k, 100, 0.01)
    assert lo.dtype == torch.float64 and lo.shape == (3,) and lo[0] == 0.0
    assert lo[2].item() == pytest.approx(0.01 ** (1 / 100), rel=1e-9)  # all successes: alpha^(1/n)
    assert lo[1].item() == pytest.approx(stats.beta.ppf(0.01, 10, 91), rel=1e-9)
    # the lower end of the two-sided interval at confidence 1 - 2 alpha, and that interval's own lower end
    assert lo[1].item() == pytest.approx(clopper_pearson(10, 100, 0.98)[0], rel=1e-9)
    # ints, per-count trials, and exact coverage: P(bound > p) <= alpha for every true p
    assert float(clopper_pearson_lower(7, 20, 0.05)) == pytest.approx(clopper_pearson(7, 20, 0.9)[0])
    assert clopper_pearson_lower(3, torch.tensor([10, 20])).tolist() == [
        pytest.approx(stats.beta.ppf(0.05, 3, m - 2)) for m in (10, 20)
    ]
    n, alpha, ks = 50, 0.1, torch.arange(51)
    for p in (0.05, 0.3, 0.5, 0.77, 0.95):
        miss = clopper_pearson_lower(ks, n, alpha) > p
        assert 0 < stats.binom.pmf(ks[miss].numpy(), n, p).sum() <= alpha
    for bad in (dict(k=5, n=4), dict(k=-1, n=4), dict(k=1, n=0), dict(k=1, n=4, alpha=1.0)):
        with pytest.raises(InputError):
            clopper_pearson_lower(**bad)  # type: ignore[arg-type]


def test_bootstrap_is_seeded_and_covers_the_value():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, generator=g), torch.randn(150, generator=g) + 1
    e1 = bootstrap_two_sample(auroc, a, b, n_boot=300, seed=3)
    e2 = bootstrap_two_sample(auroc, a, b, n_boot=300, seed=3)
    assert e1 == e2 and e1.ci_low < e1.value < e1.ci_high
    # the analytic AUROC of N(0,1) vs N(1,1) is Phi(1/sqrt(2)) ~ 0.76; the interval should be near it
    assert e1.ci_low < 0.80 and e1.ci_high > 0.70
    want = {"auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive"}
    assert set(ood_metrics(a, b, n_boot=50)) == want


# -- bootstrap from weights (issue 12 point 6): memory O(N + chunk x N), same draws as resampling --


def _reference_bootstrap(statistic, values, n_boot, seed, name, confidence=0.95):  # type: ignore[no-untyped-def]
    """The former implementation: one (n_boot, N, ...) resampled array, for comparison only."""
    from mlsafety.core import generator

    n = values.shape[0]
    idx = torch.randint(0, n, (n_boot, n), generator=generator(seed, "bootstrap", name, n))
    boot = statistic(values[idx]).double()
    q = torch.tensor([(1 - confidence) / 2, 1 - (1 - confidence) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(boot, q).tolist()
    value = float(statistic(values.unsqueeze(0))[0])
    return value, min(lo, value), max(hi, value), n


def test_bootstrap_counts_are_the_explicit_resamples_whatever_the_chunk():
    from mlsafety.core import generator
    from mlsafety.metrics import bootstrap_counts

    n, n_boot = 37, 50
    idx = torch.randint(0, n, (n_boot, n), generator=generator(4, "bootstrap", "x", n))
    want = torch.stack([torch.bincount(row, minlength=n) for row in idx]).double()
    for chunk in (n, 5 * n + 3, 10**6):  # 1 row, 5 rows and all rows per chunk
        counts = list(bootstrap_counts(n, n_boot, seed=4, name="x", chunk_elements=chunk))
        assert max(c.shape[0] for c in counts) == min(n_boot, max(1, chunk // n))
        torch.testing.assert_close(torch.cat(counts), want, rtol=0, atol=0)  # integer counts
    assert (want.sum(dim=1) == n).all()


def test_weighted_bootstrap_never_sees_more_than_a_chunk_of_draws():
    from mlsafety.metrics import bootstrap_weighted

    n, seen = 400, []
    x = torch.linspace(0, 1, n, dtype=torch.float64)

    def mean(w: torch.Tensor) -> torch.Tensor:
        seen.append(w.shape)
        return w @ x / w.sum(dim=1)

    for n_boot in (200, 2000):
        seen.clear()
        bootstrap_weighted(mean, n, n_boot, seed=1, chunk_elements=10 * n)
        assert sum(s[0] for s in seen[1:]) == n_boot  # the first call is the point value at unit weights
        assert max(s[0] for s in seen) == 10 and all(s[1] == n for s in seen)


def test_bootstrap_mean_equals_resampling_the_values():
    from mlsafety.metrics import bootstrap_mean

    g = torch.Generator().manual_seed(2)
    v = torch.randn(300, generator=g, dtype=torch.float64).exp()
    got = bootstrap_mean(v, n_boot=400, seed=9, name="m")
    want = _reference_bootstrap(lambda r: r.mean(dim=-1), v, 400, 9, "m")
    assert tuple(got) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got.value == pytest.approx(float(v.mean()), rel=1e-15)
    assert bootstrap_mean(v, n_boot=400, seed=9, name="m") == got  # seeded: identical run to run
    assert bootstrap_mean(v, n_boot=400, seed=9, name="other") != got  # another statistic, other draws


def test_bootstrap_statistic_in_chunks_equals_one_resampled_array():
    from mlsafety.metrics import bootstrap_statistic

    g = torch.Generator().manual_seed(3)
    v = torch.randn(120, 2, generator=g, dtype=torch.float64)

    def stat(r: torch.Tensor) -> torch.Tensor:  # a median: not a function of sums
        return (r[..., 0] - r[..., 1]).median(dim=-1).values

    want = _reference_bootstrap(stat, v, 300, 5, "med")
    for chunk in (240, 240 * 7, None):
        got = bootstrap_statistic(stat, v, n_boot=300, seed=5, name="med", chunk_elements=chunk)
        assert tuple(got) == pytest.approx(want, rel=1e-12)


def test_bootstrap_refuses_an_empty_sample_and_no_draws():
    from mlsafety.metrics import bootstrap_counts, bootstrap_mean

    with pytest.raises(InputError, match="empty"):
        bootstrap_mean(torch.empty(0))
    with pytest.raises(InputError, match="n_boot"):
        next(bootstrap_counts(5, 0))


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    assert float(median(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == 2.5  # torch.median gives 2
    assert float(median(torch.tensor([5.0, 1.0, 3.0]))) == 3.0
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, 4, generator=g, dtype=torch.float64)
    for dim in (0, 1, 2, -1):
        want = torch.from_numpy(np.median(x.numpy(), axis=dim))
        assert torch.equal(median(x, dim=dim), want)
        assert torch.equal(median(x, dim=dim, keepdim=True), want.unsqueeze(dim))
    with pytest.raises(InputError, match="empty"):
        median(torch.zeros(2, 0))


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0, -0.5])
def test_interval_levels_outside_zero_one_are_refused(confidence: float) -> None:
    with pytest.raises(InputError, match="confidence must lie in"):
        clopper_pearson(3, 10, confidence)
    with pytest.raises(InputError, match="confidence must lie in"):
        wilson(3, 10, confidence)


def test_wilson_refuses_counts_outside_zero_n() -> None:
    for k in (-1, 11):
        with pytest.raises(InputError, match="must lie in"):
            wilson(k, 10)
