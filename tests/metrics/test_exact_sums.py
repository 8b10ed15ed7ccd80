"""count_weighted_sums: the correctly rounded sum in these cases, and the same bits in any order or thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import bootstrap_counts, count_weighted_sums
from mlsafety.monitoring.calibration import CalibrationStats


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def exact(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """counts @ values in exact rational arithmetic, rounded once to float64."""
    rows = []
    for b in range(w.shape[0]):
        rows.append([float(sum(Fraction(float(w[b, i])) * Fraction(float(v[i, k])) for i in range(w.shape[1])))
                     for k in range(v.shape[1])])  # fmt: skip
    return torch.tensor(rows, dtype=torch.float64)


def resamples(n: int, draws: int, seed: int) -> torch.Tensor:
    return torch.cat(list(bootstrap_counts(n, draws, seed, "exact-sums"))).double()


def test_equals_the_correctly_rounded_sum_over_signs_and_magnitudes() -> None:
    g = torch.Generator().manual_seed(1)
    n = 200
    v = torch.randn(n, 4, generator=g, dtype=torch.float64)
    v[:, 1] *= 1e-200  # tiny, huge and mixed-exponent columns keep their precision: each column is scaled alone
    v[:, 2] *= 1e200
    v[:, 3] *= torch.logspace(-30, 30, n, dtype=torch.float64)
    w = resamples(n, 5, seed=3)
    got = count_weighted_sums(w, v)
    assert torch.equal(got, exact(w, v))
    plain = w @ v  # a BLAS product rounds at every partial sum
    assert (got - exact(w, v)).abs().max() <= (plain - exact(w, v)).abs().max()


def test_same_bits_in_any_input_order() -> None:
    # a plain product's bits change when its terms are reordered; these must not
    g = torch.Generator().manual_seed(2)
    n = 360
    v = torch.rand(n, 10, generator=g, dtype=torch.float64).softmax(1)
    w = resamples(n, 64, seed=0)
    ref = count_weighted_sums(w, v)
    reordered = [torch.equal(count_weighted_sums(w[:, perm], v[perm]), ref)
                 for perm in (torch.randperm(n, generator=g) for _ in range(5))]  # fmt: skip
    assert all(reordered)
    plain_changed = [not torch.equal(w[:, perm] @ v[perm], w @ v)
                     for perm in (torch.randperm(n, generator=g) for _ in range(5))]  # fmt: skip
    assert any(plain_changed), "the data should be one where summation order shows"


def test_same_bits_on_one_and_two_threads() -> None:
    g = torch.Generator().manual_seed(4)
    n = 360
    p = torch.rand(n, 10, generator=g, dtype=torch.float64).softmax(1)
    w = resamples(n, 1000, seed=0)
    with threads(1):
        one = count_weighted_sums(w, p)
    with threads(2):
        two = count_weighted_sums(w, p)
    assert torch.equal(one, two)


def test_vector_values_and_empty_inputs() -> None:
    w = torch.tensor([[1, 2, 0], [0, 0, 3]])
    v = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    got = count_weighted_sums(w, v)
    assert got.shape == (2,)
    assert torch.equal(got, exact(w.double(), v[:, None])[:, 0])
    assert count_weighted_sums(torch.zeros(0, 3), v).shape == (0,)
    assert count_weighted_sums(w, torch.zeros(3, 2)).abs().sum() == 0


@pytest.mark.parametrize(
    ("w", "v", "message"),
    [
        (torch.tensor([[1.0, -1.0]]), torch.ones(2), "non-negative integers"),
        (torch.tensor([[1.0, 0.5]]), torch.ones(2), "non-negative integers"),
        (torch.ones(1, 2), torch.tensor([1.0, float("nan")]), "finite"),
        (torch.ones(1, 3), torch.ones(2), "agree in N"),
    ],
)
def test_refuses_what_it_cannot_sum_exactly(w: torch.Tensor, v: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        count_weighted_sums(w, v)


def test_classwise_ece_bootstrap_same_bits_on_one_and_two_threads() -> None:
    # the audit's shape (360 inputs, 10 classes, 1000 draws) gave different classwise-ECE interval ends on 1 and 2
    # threads when its class totals came from a BLAS product
    g = torch.Generator().manual_seed(5)
    n = 360
    logits = torch.randn(n, 10, generator=g) * 3
    labels = torch.randint(0, 10, (n,), generator=g)
    stats = CalibrationStats.from_logits(logits, labels)
    w = resamples(n, 1000, seed=0)
    with threads(1):
        one = stats.weighted("classwise_ece", w)
    with threads(2):
        two = stats.weighted("classwise_ece", w)
    assert torch.equal(one, two)
    assert torch.equal(stats.weighted("classwise_ece", torch.ones(1, n, dtype=torch.float64)),
                       torch.tensor([stats.value("classwise_ece")], dtype=torch.float64))  # fmt: skip


def test_tiny_columns_do_not_overflow_the_scaling() -> None:
    v = torch.tensor([[3e-300, 1e-310], [1e-300, 2e-310]], dtype=torch.float64)  # the second column subnormal
    w = torch.tensor([[1, 2], [3, 0]])
    assert torch.equal(count_weighted_sums(w, v), exact(w.double(), v))


def test_probabilities_skip_the_scan_and_stay_exact() -> None:
    g = torch.Generator().manual_seed(6)
    n = 150
    p = (torch.randn(n, 5, generator=g, dtype=torch.float64) * 4).softmax(1)
    p[0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # both ends of [0, 1]
    w = resamples(n, 4, seed=1)
    assert torch.equal(count_weighted_sums(w, p, probabilities=True), exact(w, p))
