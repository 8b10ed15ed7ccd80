"""calibration.evaluate_calibration: before/after recalibration with intervals, as the audit stores it."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError, derive_seed, generator
from mlsafety.monitoring import calibration as cal
from tests.support.family import check_family

test_calibrator_family = check_family(cal.CALIBRATORS)


def _logits(n: int, k: int, name: str, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(0, "evaluate", name)
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, k)
    return logits * scale, labels  # over-confident: temperature scaling has work to do


def test_values_are_the_direct_metrics_before_and_after() -> None:
    z, y = _logits(400, 4, "test")
    zv, yv = _logits(300, 4, "val")
    res = cal.evaluate_calibration(z, y, zv, yv, calibrators=("temperature", "vector"), n_boot=50, seed=3)
    probs = z.double().softmax(1)
    assert res.before["ece"].value == pytest.approx(cal.ece(probs, y), rel=1e-12)
    assert res.before["nll"].value == pytest.approx(cal.nll(probs, y), rel=1e-12)
    t = cal.TemperatureScaler().fit(zv, yv).temperature_
    ts = res.after["temperature"]
    assert ts.tag == "_after_ts" and res.after["vector"].tag == "_after_vs"
    assert ts.calibrator.temperature_ == t
    assert ts.metrics["ece"].value == pytest.approx(cal.ece((z.double() / t).softmax(1), y), rel=1e-9)
    assert ts.metrics["nll"].value < res.before["nll"].value  # over-confident logits: TS lowers the NLL
    assert res.temperature is not None and res.temperature.value == t and t > 1
    assert list(res.after) == ["temperature", "vector"]
    for est in [*res.before.values(), *ts.metrics.values(), res.temperature]:
        assert est.ci_low <= est.value <= est.ci_high and est.ci_low < est.ci_high
    assert res.params("ece") == {"n_bins": 15} and res.params("brier") == {}


def test_seeds_depend_on_the_names_only() -> None:
    z, y = _logits(300, 3, "seeds")
    alone = cal.evaluate_calibration(z, y, calibrators=(), metrics=("ece",), n_boot=60, seed=1, stream=("a",))
    every = cal.evaluate_calibration(z, y, calibrators=(), n_boot=60, seed=1, stream=("a",))
    assert alone.before["ece"] == every.before["ece"]
    stats = cal.CalibrationStats.from_logits(z, y)
    assert alone.before["ece"] == cal.metric_estimate("ece", stats, 60, derive_seed(1, "a", "ece", ""))
    other = cal.evaluate_calibration(z, y, calibrators=(), metrics=("ece",), n_boot=60, seed=1, stream=("b",))
    assert other.before["ece"].value == alone.before["ece"].value
    assert other.before["ece"].ci_low != alone.before["ece"].ci_low
    assert alone.temperature is None and alone.after == {}


def test_vector_scaling_alone_has_no_temperature() -> None:
    z, y = _logits(200, 3, "vector")
    res = cal.evaluate_calibration(z, y, z, y, calibrators=("vector",), metrics=("brier",), n_boot=20)
    assert res.temperature is None and set(res.after["vector"].metrics) == {"brier"}


def test_bad_requests_are_one_line_input_errors() -> None:
    z, y = _logits(50, 3, "bad")
    with pytest.raises(InputError, match="val_logits"):
        cal.evaluate_calibration(z, y)
    with pytest.raises(InputError, match="unknown calibration metric 'ecee'"):
        cal.evaluate_calibration(z, y, calibrators=(), metrics=("ecee",))
    with pytest.raises(InputError, match="max_iter"):
        cal.TemperatureScaler(max_iter=0)
