"""Calibration metrics against torchmetrics and hand computations; recalibrators recover known answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mlsafety.core import InputError, NotFittedError, generator
from mlsafety.monitoring import calibration as cal


@pytest.fixture(scope="module")
def tm_calibration_error() -> Callable[..., torch.Tensor]:
    from torchmetrics.functional.classification import multiclass_calibration_error

    return multiclass_calibration_error


def _sample(n: int, k: int, name: str, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(0, "calibration", name)
    logits = torch.randn(n, k, generator=g) * scale
    labels = torch.randint(0, k, (n,), generator=g)
    labels[: n // 2] = logits[: n // 2].argmax(1)  # half right, so bins hold both outcomes
    return logits.softmax(1), labels


@pytest.mark.parametrize("n_bins", [5, 15])
@pytest.mark.parametrize("norm,fn", [("l1", cal.ece), ("l2", cal.rms_calibration_error), ("max", cal.mce)])
def test_binned_errors_agree_with_torchmetrics(tm_calibration_error, n_bins: int, norm: str, fn) -> None:
    probs, labels = _sample(500, 4, f"tm-{n_bins}-{norm}")
    want = float(tm_calibration_error(probs, labels, num_classes=4, n_bins=n_bins, norm=norm))
    assert fn(probs, labels, n_bins) == pytest.approx(want, abs=1e-6)


def test_ece_by_hand() -> None:
    probs = torch.tensor([[0.92, 0.08], [0.83, 0.17], [0.26, 0.74], [0.65, 0.35]])
    labels = torch.tensor([0, 1, 1, 0])  # right, wrong, right, right
    # 2 bins: every confidence is in [0.5, 1]: accuracy 3/4, mean confidence 0.785
    assert cal.ece(probs, labels, n_bins=2) == pytest.approx(0.035, abs=1e-6)
    # 10 bins: each prediction alone in its bin
    gaps = [0.08, 0.83, 0.26, 0.35]
    assert cal.ece(probs, labels, n_bins=10) == pytest.approx(sum(gaps) / 4, abs=1e-6)
    assert cal.mce(probs, labels, n_bins=10) == pytest.approx(0.83, abs=1e-6)
    assert cal.rms_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        (sum(g * g for g in gaps) / 4) ** 0.5, abs=1e-6
    )


def test_confidence_of_one_goes_in_the_last_bin() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]])
    rel = cal.reliability(probs, torch.tensor([0, 1]), n_bins=10)
    assert rel.count.tolist() == [0] * 9 + [2]


def test_adaptive_ece_uses_equal_mass_bins() -> None:
    probs = torch.tensor([[0.55, 0.45], [0.6, 0.4], [0.9, 0.1], [0.95, 0.05]])
    labels = torch.tensor([1, 0, 0, 0])
    # two bins of two: {0.55 wrong, 0.6 right} -> |0.5 - 0.575|; {0.9, 0.95 right} -> |1 - 0.925|
    assert cal.adaptive_ece(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.075 + 0.5 * 0.075)


def test_classwise_ece_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    labels = torch.tensor([0, 0])
    # class 0: p0 = .7 and .2, both events happen -> (|1-.7| + |1-.2|)/2
    # class 1: p1 = .3 and .8, neither happens -> (.3 + .8)/2
    want = ((0.3 + 0.8) / 2 + (0.3 + 0.8) / 2) / 2
    assert cal.classwise_ece(probs, labels, n_bins=10) == pytest.approx(want)


def test_brier_and_nll_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    labels = torch.tensor([0, 1])
    assert cal.brier(probs, labels) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.0625 + 0.5625 + 0.25)) / 2)
    assert cal.nll(probs, labels) == pytest.approx(-(torch.tensor(0.7).log() + torch.tensor(0.25).log()).item() / 2)


def test_reliability_data() -> None:
    probs, labels = _sample(300, 3, "rel")
    rel = cal.reliability(probs, labels, n_bins=10)
    assert rel.count.sum() == 300 and rel.edges.shape == (11,)
    filled = rel.count > 0
    ece = float((rel.count[filled] / 300 * (rel.accuracy[filled] - rel.confidence[filled]).abs()).sum())
    assert ece == pytest.approx(cal.ece(probs, labels, 10))
    assert torch.isnan(rel.accuracy[~filled]).all()


def test_batched_rows_equal_single_rows() -> None:
    g = generator(0, "rows")
    conf = torch.rand(4, 50, generator=g)
    correct = (torch.rand(4, 50, generator=g) < conf).double()
    rows = cal.calibration_error(conf, correct, 7, "l1", "mass")
    for i in range(4):
        assert float(rows[i]) == pytest.approx(float(cal.calibration_error(conf[i], correct[i], 7, "l1", "mass")))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="softmax"):
        cal.ece(torch.tensor([[3.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="labels"):
        cal.ece(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    g = generator(0, "temperature", true_t)
    base = torch.randn(6000, 5, generator=g) * 2
    labels = torch.multinomial(base.softmax(1), 1, generator=g)[:, 0]  # calibrated at T = 1
    scaler = cal.TemperatureScaler().fit(base * true_t, labels)
    assert scaler.temperature_ == pytest.approx(true_t, rel=0.08)
    torch.testing.assert_close(scaler.transform(base * true_t), base * true_t / scaler.temperature_)


def test_temperature_scaling_lowers_the_nll_it_was_fitted_on() -> None:
    probs, labels = _sample(400, 4, "ts-nll", scale=6.0)
    logits = probs.log()
    scaler = cal.TemperatureScaler().fit(logits, labels)
    assert cal.nll(scaler.predict_proba(logits), labels) <= cal.nll(probs, labels) + 1e-9


def test_vector_scaling_recovers_per_class_scales() -> None:
    g = generator(0, "vector")
    base = torch.randn(8000, 3, generator=g) * 2
    labels = torch.multinomial(base.softmax(1), 1, generator=g)[:, 0]
    scaler = cal.VectorScaler().fit(base * 2.0, labels)  # weight 0.5 undoes the factor 2
    torch.testing.assert_close(scaler.weight_, torch.full((3,), 0.5, dtype=torch.float64), atol=0.06, rtol=0)
    assert scaler.bias_.abs().max() < 0.1


@pytest.mark.parametrize("name", cal.available())
def test_calibrator_registry_conformance(name: str) -> None:
    probs, labels = _sample(200, 3, f"reg-{name}")
    logits = probs.log().float()
    c = cal.create(name)
    with pytest.raises(NotFittedError):
        c.transform(logits)
    before = logits.clone()
    out = c.fit(logits, labels).transform(logits)
    assert out.shape == logits.shape and out.dtype == logits.dtype
    assert torch.equal(logits, before)
    torch.testing.assert_close(cal.create(name).fit(logits, labels).transform(logits), out)


def test_public_api_sorted() -> None:
    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions, each sorted
    assert list(cal.__all__) == sorted(cal.__all__, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
