"""Calibration metrics against torchmetrics and hand computations; recalibrators recover known answers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


def test_equal_mass_bins_of_uneven_size_follow_the_rank_rule_by_hand() -> None:
    # 10 confidences in 4 bins: rank r goes to bin floor(4 r / 10), sizes 3, 2, 3, 2 (np.array_split's
    # 3, 3, 2, 2 would give 0.386); given shuffled, so the bins come from the ranks, not the positions
    conf = torch.tensor([0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99], dtype=torch.float64)
    correct = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1], dtype=torch.float64)
    perm = torch.tensor([7, 2, 9, 0, 4, 6, 1, 8, 3, 5])
    assert cal.bin_index(conf[perm], 4, "mass").tolist() == [2, 0, 3, 0, 1, 2, 0, 3, 1, 2]
    want = 0.3 * 0.6 + 0.2 * 0.275 + 0.3 * 0.85 + 0.2 * 0.03
    assert float(cal.calibration_error(conf[perm], correct[perm], 4, "l1", "mass")) == pytest.approx(want, abs=1e-12)


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


def test_vector_scaling_is_the_validation_nll_minimiser() -> None:
    """Distinct per-class scales and shifts: the fitted (w, b) is a stationary point of the NLL of
    ``softmax(z * w + b)`` on the data it was fitted on, and no tighter optimiser finds a lower NLL."""
    from scipy.optimize import minimize

    g = generator(0, "vector-minimiser")
    z = (torch.randn(600, 4, generator=g) * 2).double()
    true = z * torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64) + torch.tensor([0.0, 0.5, 0.0, -0.5])
    labels = torch.multinomial(true.softmax(1), 1, generator=g)[:, 0]
    scaler = cal.VectorScaler().fit(z, labels)
    w, b = scaler.weight_.clone().requires_grad_(), scaler.bias_.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(z * w + b, labels)
    loss.backward()
    assert max(float(w.grad.abs().max()), float(b.grad.abs().max())) < 1e-4

    def nll(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(x, requires_grad=True)
        out = torch.nn.functional.cross_entropy(z * p[:4] + p[4:], labels)
        out.backward()
        return float(out.detach()), p.grad.numpy()

    ref = minimize(nll, np.r_[np.ones(4), np.zeros(4)], jac=True, method="BFGS", options={"gtol": 1e-10})
    assert float(loss.detach()) == pytest.approx(ref.fun, abs=1e-8)
    torch.testing.assert_close(scaler.weight_, torch.from_numpy(ref.x[:4]), atol=1e-3, rtol=0)


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


# -- binning convention at confidence exactly 1 and on bin edges (issue 12 point 10) ---------------


def test_confidence_one_shares_the_last_bin_unlike_torchmetrics(tm_calibration_error) -> None:
    # confidence 1.0 (wrong) and 0.95 (right): one last bin [0.9, 1], accuracy 0.5, confidence 0.975
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert cal.ece(probs, labels, n_bins=10) == pytest.approx(0.475, abs=1e-12)
    assert cal.mce(probs, labels, n_bins=10) == pytest.approx(0.475, abs=1e-12)
    assert cal.reliability(probs, labels, n_bins=10).count.tolist() == [0] * 9 + [2]
    # torchmetrics gives 1.0 a bin of its own, as the module docstring says: 0.525 and 1.000
    tm = {n: float(tm_calibration_error(probs, labels, num_classes=2, n_bins=10, norm=n)) for n in ("l1", "max")}
    assert tm["l1"] == pytest.approx(0.525, abs=1e-6) and tm["max"] == pytest.approx(1.0, abs=1e-6)


def test_a_confidence_on_an_inner_edge_goes_to_the_bin_above() -> None:
    # 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; 0.5 and 0.75 are exact in binary
    conf = torch.tensor([0.5, 0.75, 0.7499999, 1.0], dtype=torch.float64)
    assert cal.bin_index(conf, 4).tolist() == [2, 3, 2, 3]
    probs = torch.stack([conf, 1 - conf], dim=1)
    assert cal.reliability(probs, torch.zeros(4, dtype=torch.long), n_bins=4).count.tolist() == [0, 0, 2, 2]
    assert "own bin" not in cal.binned.__doc__ and "a bin of its own" in cal.binned.__doc__


def test_nll_floors_the_true_class_probability_at_1e_12() -> None:
    probs = torch.tensor([[1.0, 0.0], [1.0 - 1e-15, 1e-15], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 1])
    cap = -torch.tensor(cal.NLL_EPS, dtype=torch.float64).log().item()
    assert cap == pytest.approx(27.631021115928547)
    # p_y = 0 and p_y = 1e-15 both count as 1e-12: the mean is below the true one (infinite, 34.5)
    torch.testing.assert_close(cal.nll_per_sample(probs, labels), torch.tensor([cap, cap, 0.6931471805599453],
                               dtype=torch.float64))  # fmt: skip
    assert "1e-12" in cal.nll.__doc__ and "lower" in cal.nll.__doc__


# -- the memory-bounded path: same point values, weights = explicit resamples (issue 12 point 6) ----


def _old_classwise(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """The former (N, K)-copying classwise ECE, for comparison."""
    p = probs.double()
    onehot = torch.nn.functional.one_hot(labels, p.shape[1]).double()
    return float(cal.calibration_error(p.T.contiguous(), onehot.T.contiguous(), n_bins, "l1", "width").mean())


def _direct(metric: str, probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    fn = getattr(cal, metric)
    return float(fn(probs, labels)) if metric in ("brier", "nll") else float(fn(probs, labels, n_bins))


def _counts(n: int, b: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, n, (b, n), generator=generator(0, "counts", name))
    return idx, torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(b, n, dtype=torch.float64))


@pytest.mark.parametrize("small_blocks", [False, True])
@pytest.mark.parametrize("metric", cal.METRICS)
def test_stats_give_the_direct_formulas_and_weights_give_the_resampled_metric(
    monkeypatch, metric: str, small_blocks: bool
) -> None:
    if small_blocks:  # 16 rows of probabilities, one draw of classwise bin sums at a time
        monkeypatch.setattr(cal._validate, "BLOCK_ELEMENTS", 100)
    probs, labels = _sample(240, 6, f"stats-{metric}")
    stats = cal.CalibrationStats.from_probs(probs, labels, n_bins=9)
    direct = _direct(metric, probs, labels, 9)
    assert stats.value(metric) == pytest.approx(direct, rel=1e-12, abs=1e-15)
    if metric == "classwise_ece":
        assert direct == pytest.approx(_old_classwise(probs, labels, 9), rel=1e-12)
    brute = {
        "brier": lambda p, y: float(((p.double() - torch.nn.functional.one_hot(y, 6)) ** 2).sum(1).mean()),
        "nll": lambda p, y: float(-p.double().gather(1, y[:, None]).log().mean()),
    }
    if metric in brute:
        assert direct == pytest.approx(brute[metric](probs, labels), rel=1e-12)
    idx, w = _counts(240, 12, metric)
    want = torch.tensor([_direct(metric, probs[i], labels[i], 9) for i in idx], dtype=torch.float64)
    torch.testing.assert_close(stats.weighted(metric, w), want, rtol=1e-12, atol=1e-14)


def test_stats_from_logits_equal_softmax_in_float64_and_take_a_transform() -> None:
    g = generator(0, "from-logits")
    logits = torch.randn(150, 5, generator=g) * 4
    labels = torch.randint(0, 5, (150,), generator=g)
    for transform, scale in ((None, 1.0), (lambda z: z / 2.5, 2.5)):
        stats = cal.CalibrationStats.from_logits(logits, labels, 15, transform=transform)
        probs = (logits.double() / scale).softmax(1)
        for m in cal.METRICS:
            assert stats.value(m) == pytest.approx(_direct(m, probs, labels, 15), rel=1e-12, abs=1e-15)


def test_calibration_bootstrap_equals_resampling_the_predictions() -> None:
    from mlsafety.metrics import bootstrap_statistic

    probs, labels = _sample(300, 4, "boot-ref")
    stats = cal.CalibrationStats.from_probs(probs, labels, 15)
    conf, correct = cal.confidence_and_correct(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    refs = {
        "ece": (lambda v: cal.calibration_error(v[..., 0], v[..., 1], 15), torch.stack([conf, correct], 1)),
        "adaptive_ece": (
            lambda v: cal.calibration_error(v[..., 0], v[..., 1], 15, "l1", "mass"),
            torch.stack([conf, correct], 1),
        ),
        "classwise_ece": (
            lambda v: (
                cal.calibration_error(
                    v[..., :4].transpose(1, 2).reshape(-1, 300), v[..., 4:].transpose(1, 2).reshape(-1, 300), 15
                )
                .reshape(-1, 4)
                .mean(1)
            ),
            torch.cat([probs.double(), onehot], 1),
        ),
    }
    for metric, (stat, values) in refs.items():
        want = bootstrap_statistic(stat, values, n_boot=200, seed=11, name=metric)
        got = cal.metric_estimate(metric, stats, n_boot=200, seed=11)
        assert tuple(got) == pytest.approx(tuple(want), rel=1e-12, abs=1e-15), metric


def test_stats_refuse_bad_input_in_one_line() -> None:
    with pytest.raises(InputError, match="softmax"):
        cal.CalibrationStats.from_probs(torch.tensor([[3.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="fractions"):
        cal.CalibrationStats.from_probs(torch.tensor([[0.5, 0.5]]), torch.tensor([0.4]))
    with pytest.raises(InputError, match="NaN"):
        cal.CalibrationStats.from_logits(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="unknown calibration metric"):
        cal.CalibrationStats.from_probs(torch.tensor([[0.5, 0.5]]), torch.tensor([0])).value("ecee")


# -- the fitted temperature and its interval (issue 12 point 11) ------------------------------------


def _tempered(n: int, k: int, t: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(0, "tempered", name)
    base = torch.randn(n, k, generator=g) * 2
    labels = torch.multinomial(base.softmax(1), 1, generator=g)[:, 0]
    return (base * t).float(), labels


def test_temperature_fit_is_the_nll_minimiser() -> None:
    from scipy.optimize import minimize_scalar

    logits, labels = _tempered(500, 4, 1.7, "minimiser")
    z = logits.double()
    t = cal.TemperatureScaler().fit(logits, labels).temperature_

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / torch.tensor(log_t).exp(), labels))

    ref = minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10}).x
    assert t == pytest.approx(float(torch.tensor(ref).exp()), rel=1e-6)
    log_t = torch.tensor(t, dtype=torch.float64).log().requires_grad_()
    torch.nn.functional.cross_entropy(z / log_t.exp(), labels).backward()
    assert abs(float(log_t.grad)) < 1e-9  # a stationary point, not just close


def test_temperature_sits_at_its_bound_when_the_nll_keeps_falling() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    labels = logits.argmax(1)  # every input right with a margin: the NLL falls as T -> 0
    assert cal.TemperatureScaler().fit(logits, labels).temperature_ == pytest.approx(1 / cal.scaling.S_MAX)


@pytest.mark.parametrize("n,exact", [(60, True), (2000, False)])
def test_bootstrap_temperatures_equal_refits_on_explicit_resamples(monkeypatch, n: int, exact: bool) -> None:
    from mlsafety.metrics import bootstrap_counts

    if not exact:  # the grid interpolation alone, as used when N x K is large
        monkeypatch.setattr(cal.scaling, "_EXACT_BUDGET", 0)
    logits, labels = _tempered(n, 5, 0.6, f"refit-{n}")
    t = cal.TemperatureScaler().fit(logits, labels).temperature_
    draws = bootstrap_counts(n, 12, seed=3, name="temperature")
    got = 1 / cal.scaling._bootstrap_inverse_temperatures(logits, labels, 1 / t, draws)
    idx = torch.randint(0, n, (12, n), generator=generator(3, "bootstrap", "temperature", n))
    want = torch.tensor(
        [cal.TemperatureScaler().fit(logits[i], labels[i]).temperature_ for i in idx], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=1e-9 if exact else 1e-7, atol=0)


def test_temperature_estimate_is_seeded_and_covers_the_true_temperature() -> None:
    logits, labels = _tempered(3000, 5, 2.0, "estimate")
    t = cal.TemperatureScaler().fit(logits, labels).temperature_
    est = cal.temperature_estimate(logits, labels, t, n_boot=200, seed=1)
    assert est.value == t and est.n == 3000 and est.ci_low < t < est.ci_high < 1.1 * est.ci_low
    assert cal.temperature_estimate(logits, labels, n_boot=200, seed=1) == est  # fits T itself, same draws
    with pytest.raises(InputError, match="positive"):
        cal.temperature_estimate(logits, labels, -1.0)


def test_temperature_interval_covers_the_true_temperature_about_95_percent_of_the_time() -> None:
    covered = 0
    for rep in range(40):  # 40 validation sets drawn at T = 2: expect ~38 covered, < 32 has p < 1e-3
        logits, labels = _tempered(400, 3, 2.0, f"coverage-{rep}")
        est = cal.temperature_estimate(logits, labels, n_boot=200, seed=rep)
        covered += est.ci_low <= 2.0 <= est.ci_high
    assert covered >= 32


def test_calibration_check_stores_the_temperature_as_an_estimate_with_its_interval() -> None:
    from torch import nn

    from mlsafety.audit import CHECKS, AuditContext, AuditData
    from mlsafety.audit import checks as _checks  # noqa: F401  (registers the checks)
    from mlsafety.core import ArrayDataset, Classifier

    g = generator(0, "check-temperature")
    head = nn.Linear(16, 4)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, 16, generator=g) * 3)
        head.bias.zero_()
    model = Classifier(nn.Sequential(nn.Flatten(), head).eval())

    def data(n: int) -> ArrayDataset:
        x = torch.rand(n, 1, 4, 4, generator=g)
        with torch.no_grad():
            y = torch.multinomial((head(x.flatten(1)) / 3).softmax(1), 1, generator=g)[:, 0]  # T = 3
        return ArrayDataset(x, y)

    ctx = AuditContext(model, AuditData(test=data(300), val=data(600)), seed=0)
    rows = [r for task in CHECKS.create("calibration", n_boot=100).tasks(ctx) for r in task.run().rows]
    t = next(r for r in rows if r.metric == "temperature")
    assert t.kind == "estimate" and t.n == 600 and t.ci_low < t.value < t.ci_high
    val = ctx.outputs_for(ctx.data.val).logits
    assert t.value == pytest.approx(cal.TemperatureScaler().fit(val, ctx.data.val.y).temperature_, rel=1e-12)
    assert all(r.ci_low is not None and r.ci_low <= r.value <= r.ci_high for r in rows)
