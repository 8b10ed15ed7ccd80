"""Corruption estimates from per-input correctness: their point values agree with the published
formulas (``corruptions.mce``) and their intervals come from an input bootstrap."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.robustness.corruptions import ALEXNET_ERRORS, mce
from mlsafety.robustness.corruptions.evaluate import estimate_corruption, estimate_mce


def test_one_corruption_by_hand() -> None:
    correct = {1: torch.tensor([True, True, False, True]), 3: torch.tensor([True, False, False, True])}
    est = estimate_corruption(correct, n_boot=200, seed=0, name="fog-ce")
    assert est.accuracy[1].value == 0.75 and est.error[3].value == 0.5
    assert (est.accuracy[3].ci_low, est.accuracy[3].ci_high) == pytest.approx(clopper_pearson(2, 4))
    assert est.ce is not None and est.ce.value == pytest.approx((0 + 0.5 + 1 + 0) / 4) and est.ce.n == 4
    assert est.ce.ci_low <= est.ce.value <= est.ce.ci_high
    assert estimate_corruption(correct, ce=False).ce is None
    with pytest.raises(InputError):
        estimate_corruption({})


@pytest.mark.parametrize("normalised", [False, True])
def test_summaries_equal_the_published_formulas(normalised: bool) -> None:
    g = torch.Generator().manual_seed(0)
    names = ["gaussian-noise", "fog", "not-in-the-baseline"]
    correct = torch.rand(40, 3, 5, generator=g) > 0.4
    clean = torch.rand(40, generator=g) > 0.2
    baseline = {**ALEXNET_ERRORS} if normalised else None
    est = estimate_mce(clean, correct, names, baseline=baseline, n_boot=100, seed=4)
    errors = {n: (~correct[:, i, :]).double().mean(dim=0).tolist() for i, n in enumerate(names)}
    clean_error = float((~clean).double().mean())
    raw = mce(errors, clean_error)
    assert est.mce_unnormalised.value == pytest.approx(raw.mce)
    assert est.relative_mce_unnormalised.value == pytest.approx(raw.relative_mce)
    assert est.mean_accuracy.value == pytest.approx(float(correct.double().mean()))
    assert est.clean_accuracy == pytest.approx(1 - clean_error)
    assert est.accuracy_grid.shape == (3, 5)
    if normalised:
        kept = {n: errors[n] for n in names[:2]}
        want = mce(kept, clean_error, baseline=ALEXNET_ERRORS)
        assert est.normalised and est.normalised_names == tuple(names[:2])
        assert (est.mce.value, est.relative_mce.value) == pytest.approx((want.mce, want.relative_mce))
    else:
        assert not est.normalised and est.mce == est.mce_unnormalised
    for e in (est.mce, est.relative_mce, est.mean_accuracy):
        assert e.ci_low <= e.value <= e.ci_high and e.n == 40


def test_seeds_per_statistic_and_bad_shapes() -> None:
    g = torch.Generator().manual_seed(1)
    correct, clean = torch.rand(30, 2, 3, generator=g) > 0.5, torch.rand(30, generator=g) > 0.5
    a = estimate_mce(clean, correct, ["fog", "snow"], n_boot=50, seed=lambda label: len(label))
    b = estimate_mce(clean, correct, ["fog", "snow"], n_boot=50, seed=lambda label: len(label))
    c = estimate_mce(clean, correct, ["fog", "snow"], n_boot=50, seed=7)
    assert (a.mce, a.relative_mce, a.mean_accuracy) == (b.mce, b.relative_mce, b.mean_accuracy)
    assert a.mce != c.mce  # another stream, another interval
    with pytest.raises(InputError, match=r"\(N, C, S\)"):
        estimate_mce(clean, correct, ["fog"])
    with pytest.raises(InputError, match="baseline"):
        estimate_mce(clean, correct, ["fog-x", "snow-x"], baseline=ALEXNET_ERRORS)


@pytest.mark.parametrize(
    ("baseline", "clean_error", "needle"),
    [
        ({"fog": 0.0, "snow": 0.8}, 0.4, "error of 'fog' must be a number in \\(0, 1\\]"),  # mCE divided by 0: inf
        ({"fog": -0.5, "snow": 0.8}, 0.4, "error of 'fog' must be"),  # a negative mCE
        ({"fog": 0.6, "snow": 0.3}, 0.4, "'snow' \\(0.3\\) must be above the baseline's clean error"),
        ({"fog": 0.6, "snow": 0.8}, 1.5, "baseline's clean error must be a number in \\[0, 1\\)"),
    ],
)
def test_baselines_the_normalised_forms_cannot_divide_by_are_refused(
    baseline: dict[str, float], clean_error: float, needle: str
) -> None:
    g = torch.Generator().manual_seed(2)
    correct, clean = torch.rand(30, 2, 5, generator=g) > 0.5, torch.rand(30, generator=g) > 0.5
    with pytest.raises(InputError, match=needle):
        estimate_mce(clean, correct, ["fog", "snow"], baseline=baseline, baseline_clean_error=clean_error, n_boot=20)


def test_baseline_errors_as_numpy_scalars_are_numbers_too() -> None:
    """Errors averaged with numpy come as np.float32 scalars: they are numbers in (0, 1], taken as the same
    values as Python floats (they were refused as 'must be a number')."""
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(2)
    correct, clean = torch.rand(30, 2, 5, generator=g) > 0.5, torch.rand(30, generator=g) > 0.5
    errors = np.array([0.75, 0.625], dtype=np.float32)  # exact in float32
    as_numpy = {"fog": errors[0], "snow": errors[1]}
    as_float = {"fog": 0.75, "snow": 0.625}
    got = estimate_mce(
        clean, correct, ["fog", "snow"], baseline=as_numpy, baseline_clean_error=np.float32(0.5), n_boot=20
    )
    want = estimate_mce(clean, correct, ["fog", "snow"], baseline=as_float, baseline_clean_error=0.5, n_boot=20)
    assert (got.mce.value, got.relative_mce.value) == pytest.approx((want.mce.value, want.relative_mce.value))
