"""The fused OOD bootstrap (:func:`mlsafety.metrics.ood_metrics`) evaluates its resamples in blocks
bounded by a byte budget (issue 12, point 6) and still draws exactly the resamples of
:func:`mlsafety.metrics.bootstrap_two_sample` with the same seed."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import OOD_METRICS, _fused, bootstrap_two_sample, ood_metrics


def _scores(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, generator=g) * 3).round()  # ties within and across the samples
    b = torch.randn(m, generator=g) * 3 + 2
    return a, b


@pytest.mark.parametrize("block_elements", [1, 700, None])
def test_every_metric_equals_an_explicit_resampling_bootstrap_whatever_the_block(block_elements: int | None) -> None:
    """n_boot 530 spans three chunks of the stream (250, 250, 30); a block of 1 entry evaluates one
    resample at a time, 700 entries a few (not dividing the chunk). Drawing each block's OOD indices
    right after its ID indices, or restarting the stream per block, gives other resamples and fails."""
    a, b = _scores(90, 61, 4)
    fused = ood_metrics(a, b, n_boot=530, seed=11, block_elements=block_elements)
    for name, metric in OOD_METRICS.items():
        ref = bootstrap_two_sample(metric, a, b, n_boot=530, seed=11)
        got = fused[name]
        assert (got.value, got.ci_low, got.ci_high) == pytest.approx((ref.value, ref.ci_low, ref.ci_high), abs=1e-12)
        assert got.n == ref.n == 151


def test_the_evaluated_block_is_bounded_by_the_budget_not_by_n_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every (resamples, distinct scores) array handed to the metric step stays within the budget,
    for 40 or 4,000 resamples alike; the former code evaluated 250 resamples at once."""
    seen: list[tuple[int, int]] = []
    real = _fused._from_histograms

    def spy(ha: torch.Tensor, hb: torch.Tensor, tpr: float) -> torch.Tensor:
        seen.append(tuple(ha.shape))  # type: ignore[arg-type]
        return real(ha, hb, tpr)

    monkeypatch.setattr(_fused, "_from_histograms", spy)
    a, b = torch.randn(2_000, generator=torch.Generator().manual_seed(0)), torch.randn(1_500) + 1
    widest = {}
    for n_boot in (40, 4_000):
        seen.clear()
        ood_metrics(a, b, n_boot=n_boot, seed=0, block_elements=20_000)
        u = seen[0][1]  # the point value's single row: every distinct score
        assert u == 3_500
        assert sum(rows for rows, _ in seen[1:]) == n_boot
        widest[n_boot] = max(rows for rows, _ in seen[1:])
        assert widest[n_boot] * u <= 20_000
    assert widest[40] == widest[4_000] == 20_000 // 3_500


def test_a_bootstrap_without_resamples_is_an_input_error() -> None:
    with pytest.raises(InputError, match="n_boot must be at least 1"):
        ood_metrics(torch.zeros(3), torch.ones(3), n_boot=0)
