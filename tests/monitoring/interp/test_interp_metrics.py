"""Patching metrics: hand-computed logit differences, normalisation anchors, intervals."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mlsafety.core import InputError
from mlsafety.monitoring.interp import PromptMetric, logit_diff, normalised, t_interval


def test_logit_diff_by_hand() -> None:
    logits = torch.tensor([[1.0, 4.0, -2.0], [0.5, 0.0, 3.0]])
    got = logit_diff(logits, torch.tensor([1, 2]), torch.tensor([2, 0]))
    torch.testing.assert_close(got, torch.tensor([6.0, 2.5]))
    with pytest.raises(InputError, match="shape"):
        logit_diff(logits, torch.tensor([1]), torch.tensor([2, 0]))


def test_normalised_anchors_and_guard() -> None:
    clean, corrupted = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    value = torch.stack([clean, corrupted, (clean + corrupted) / 2], dim=1)  # (2, 3)
    torch.testing.assert_close(normalised(value, clean, corrupted), torch.tensor([[1.0, 0.0, 0.5]] * 2))
    with pytest.raises(InputError, match="prompt 1"):
        normalised(value, torch.tensor([3.0, 1.0]), corrupted)


def test_t_interval_matches_scipy_and_skips_nan() -> None:
    values = torch.tensor([[1.0, 2.0], [2.0, float("nan")], [4.0, 4.0], [5.0, 3.0]])
    mean, low, high = t_interval(values)
    for j, col in enumerate(([1.0, 2.0, 4.0, 5.0], [2.0, 4.0, 3.0])):
        lo, hi = stats.t.interval(0.95, len(col) - 1, loc=sum(col) / len(col), scale=stats.sem(col))
        assert mean[j] == pytest.approx(sum(col) / len(col))
        assert (float(low[j]), float(high[j])) == pytest.approx((lo, hi), rel=1e-5)


def test_prompt_metric_interval_contains_the_mean() -> None:
    m = PromptMetric.of(torch.arange(20.0))
    assert m.n == 20 and m.mean == pytest.approx(9.5)
    assert m.ci_low < 9.5 < m.ci_high


def test_ratio_of_means_is_not_dominated_by_a_near_tied_prompt() -> None:
    from mlsafety.monitoring.interp.metrics import ratio_of_means

    clean = torch.tensor([2.0, 3.0, 1.0, 0.01])
    corrupted = torch.tensor([0.0, 1.0, -1.0, 0.0])
    raw = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [0.0, 1.0], [0.5, 0.0]])  # prompt 3: ratio 50
    est, low, high = ratio_of_means(raw, clean, corrupted)
    # site 0: (3.5 - 0) / (6.01 - 0); site 1 leaves prompt 0 out: (4 - 0) / (4.01 - 0)
    torch.testing.assert_close(est, torch.tensor([3.5 / 6.01, 4.0 / 4.01]))
    assert bool((low <= est).all() and (est <= high).all()) and float(high[0]) < 2
    # the bootstrap pairs each prompt's three values: an exact copy of the clean run gives [1, 1]
    one, lo1, hi1 = ratio_of_means(clean[:, None].expand(4, 3), clean, corrupted)
    torch.testing.assert_close(torch.stack([one, lo1, hi1]), torch.ones(3, 3))
