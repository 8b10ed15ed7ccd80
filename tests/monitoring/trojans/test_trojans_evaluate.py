"""The trojan scan's summary with intervals (monitoring/trojans/evaluate.py): the class bootstrap of
MAD anomaly indices against brute force and the scanner's own index, and summarize_scan's score,
flag-rate and per-class estimates on hand-made scans."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.monitoring.trojans import ScanResult, anomaly_index
from mlsafety.monitoring.trojans.evaluate import (
    N_CLASS_BOOT,
    class_draws,
    mad_index_bootstrap,
    silverman_bandwidth,
    summarize_scan,
)
from mlsafety.monitoring.trojans.scanners import SeedScan


def test_anomaly_index_uses_the_median_of_an_even_count_as_neural_cleanse_does() -> None:
    """With K = 10 the median is the mean of the 5th and 6th values (NumPy's, and the MAD test's of Wang et
    al.); torch.median's lower middle value gives 12 / (1.4826 * 2) = 4.05 here instead of 3.37."""
    norms = torch.tensor([1.0, 10, 11, 12, 13, 14, 15, 16, 17, 18], dtype=torch.float64)
    # median 13.5; deviations 12.5, 3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5, 4.5: MAD (2.5 + 2.5) / 2 = 2.5
    assert float(anomaly_index(norms)[0]) == pytest.approx(12.5 / (1.4826 * 2.5), rel=1e-12)
    g = torch.Generator().manual_seed(1)
    for k in (9, 10, 11, 12):
        v = torch.rand(k, generator=g, dtype=torch.float64)
        want = torch.quantile(v, 0.5)
        mad = torch.quantile((v - want).abs(), 0.5) * 1.4826
        assert torch.allclose(anomaly_index(v), (want - v) / mad, rtol=1e-12, atol=0)
        assert torch.allclose(anomaly_index(v[torch.randperm(k, generator=g)]).sort().values,
                              anomaly_index(v).sort().values, rtol=1e-12, atol=0)  # fmt: skip


def test_class_bootstrap_at_the_identity_resample_is_the_scanners_index() -> None:
    g = torch.Generator().manual_seed(0)
    norms = torch.rand(2, 10, generator=g, dtype=torch.float64) * 30 + 5
    identity = torch.arange(10)[None]
    got = mad_index_bootstrap(norms, -1.0, identity)[0]
    for s in range(2):
        assert torch.allclose(got[s], anomaly_index(norms[s]), rtol=1e-12, atol=0)
    # an index is invariant under increasing affine maps: the indices stand for the raw values (+1 side)
    draws = class_draws(10, g, 300)
    raw = mad_index_bootstrap(norms, 1.0, draws)
    from_index = mad_index_bootstrap(-anomaly_index(norms[0])[None], 1.0, draws)
    ok = raw[:, 0].abs().amax(dim=1) < 1e6  # resamples whose MAD is not 0 (there the index is clamped, not affine)
    assert int(ok.sum()) > 250
    assert torch.allclose(raw[ok, 0], from_index[ok, 0], rtol=1e-9, atol=1e-9)


def test_class_bootstrap_by_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    v = torch.rand(1, 10, generator=g, dtype=torch.float64)
    draws = class_draws(10, g, 40)
    got = mad_index_bootstrap(v, -1.0, draws)
    for b in range(40):
        ref = v[0, draws[b]]
        med = torch.quantile(ref, 0.5)  # 10 classes: the mean of the two middle values
        mad = torch.quantile((ref - med).abs(), 0.5) * 1.4826
        assert torch.allclose(got[b, 0], (med - v[0]) / mad.clamp_min(1e-12), rtol=1e-12)


def test_smoothing_keeps_a_resample_with_repeated_classes_from_exploding() -> None:
    """A plain resample of 10 classes that repeats one value six times has MAD 0: every index is
    divided by the 1e-12 floor. The smoothed bootstrap moves each value by Silverman's bandwidth."""
    v = torch.tensor([[15.1, 20.1, 12.5, 12.1, 14.0, 12.5, 16.1, 16.0, 11.5, 12.3]], dtype=torch.float64)
    # median (12.5 + 14.0) / 2 = 13.25; deviations 0.75, 0.75, 0.75, 0.95, 1.15, 1.75, ...: MAD 1.45
    assert float(silverman_bandwidth(v)[0, 0]) == pytest.approx(1.06 * 1.4826 * 1.45 * 10**-0.2, rel=1e-9)
    g = torch.Generator().manual_seed(0)
    draws = class_draws(10, g, 4000)
    draws[0] = torch.tensor([8, 8, 8, 8, 8, 8, 2, 3, 4, 5])  # more than half the resample is class 8
    noise = torch.randn((4000, 1, 10), generator=g, dtype=torch.float64)
    plain = mad_index_bootstrap(v, -1.0, draws)
    smooth = mad_index_bootstrap(v, -1.0, draws, noise)
    assert float(plain[0].abs().max()) > 1e9  # MAD 0: the plain bootstrap explodes
    assert float(smooth[0].abs().max()) < 100
    q = torch.tensor([0.975], dtype=torch.float64)
    assert float(torch.quantile(smooth.amax(dim=2)[:, 0], q)) < float(torch.quantile(plain.amax(dim=2)[:, 0], q))


def _scan(
    scanner: str,
    scores: list[float],
    threshold: float,
    extra: list[dict[str, float]] | None = None,
    per_class: torch.Tensor | None = None,
) -> ScanResult:
    """A scan result as a scanner leaves it, one run per seed."""
    runs = [SeedScan(s, per_class=per_class, extra=(extra or [{}] * len(scores))[i]) for i, s in enumerate(scores)]
    mean = sum(scores) / len(scores)
    return ScanResult(scanner, mean, 0.0, scores, threshold, mean > threshold, 0.0, [], per_class=per_class, runs=runs)


def test_a_share_scanner_is_exact_and_bonferroni_over_seeds() -> None:
    one = summarize_scan(_scan("strip", [0.25], 0.1), torch.Generator(), shares=[40])
    assert (one.score.ci_low, one.score.ci_high) == pytest.approx(clopper_pearson(10, 40))
    assert one.interval == "exact (Clopper-Pearson)" and one.flag_rate.value == 1.0
    two = summarize_scan(_scan("abs", [0.25, 0.5], 0.4), torch.Generator(), shares=[40, 20])
    want_lo = (clopper_pearson(10, 40, 0.975)[0] + clopper_pearson(10, 20, 0.975)[0]) / 2
    assert two.score.ci_low == pytest.approx(want_lo) and two.score.n == 60
    assert two.flag_rate.value == 0.5  # one seed of two over the threshold
    with pytest.raises(InputError, match="number of inputs"):
        summarize_scan(_scan("strip", [0.25], 0.1), torch.Generator())


def test_a_seed_spread_score_is_students_t() -> None:
    s = summarize_scan(_scan("activation-clustering", [1.0, 2.0, 3.0], 2.5), torch.Generator())
    assert s.score.value == 2.0 and s.score.ci_high - 2.0 == pytest.approx(4.302652729911275 / 3**0.5)
    with pytest.raises(InputError, match="n_seeds >= 2"):
        summarize_scan(_scan("activation-clustering", [1.0], 2.5), torch.Generator())


def test_neural_cleanse_summary_and_its_streams() -> None:
    norms = [[30.0, 31.0, 29.0, 30.5, 2.0, 29.5], [29.0, 30.0, 31.0, 30.0, 3.0, 30.5]]
    extra = [{f"l1_class_{c}": v for c, v in enumerate(row)} for row in norms]
    index = torch.stack([anomaly_index(torch.tensor(r, dtype=torch.float64)) for r in norms]).mean(dim=0)
    res = _scan("neural-cleanse", [float(index.max())] * 2, 2.0, extra=extra, per_class=index)
    a = summarize_scan(res, torch.Generator().manual_seed(1), per_class_generator=torch.Generator().manual_seed(2))
    b = summarize_scan(res, torch.Generator().manual_seed(1), per_class_generator=torch.Generator().manual_seed(2))
    assert a.score == b.score and a.anomaly_index == b.anomaly_index
    assert a.interval == f"smoothed bootstrap over the 6 classes ({N_CLASS_BOOT} resamples)"
    assert len(a.anomaly_index) == 6 and a.mask_l1 is not None and a.mask_l1.shape == (2, 6)
    assert a.anomaly_index[4].value == pytest.approx(float(index[4])) and float(index[4]) > 2.0  # small mask
    assert max(range(6), key=lambda c: a.anomaly_index[c].ci_high) == 4
    assert all(e.ci_low <= e.value <= e.ci_high for e in (a.score, *a.anomaly_index))
