"""evaluate(): robust accuracy with exact intervals, success rate, perturbation norms, sanity flags."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import ArrayDataset, InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.robustness import evaluate, sanity_flags, summarize_attack
from mlsafety.robustness.attacks import FGSM, PGD, create


def _linear_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = 0.3 + 0.4 * torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    y[:5] = 1 - y[:5]  # five clean errors
    return model, x, y


def test_eps_zero_gives_clean_accuracy_and_no_success() -> None:
    model, x, y = _linear_data()
    res = evaluate(model, (x, y), create("pgd", eps=0.0, steps=2))
    assert res.clean_accuracy.value == pytest.approx(25 / 30)
    assert res.robust_accuracy.value == pytest.approx(25 / 30)
    assert res.attack_success_rate.value == 0.0
    assert res.median_perturbation_norm is None  # nothing broke
    assert (res.robust_accuracy.ci_low, res.robust_accuracy.ci_high) == pytest.approx(clopper_pearson(25, 30))


def test_counts_interval_and_median_norm_on_a_linear_model() -> None:
    model, x, y = _linear_data()
    w = (model[1].weight[1] - model[1].weight[0]).detach()
    with torch.no_grad():
        z = model(x)
    dist = (z[:, 0] - z[:, 1]).abs() / w.abs().sum()  # minimal L-inf distance to the boundary
    eps = float(dist[5:].median())
    res = evaluate(model, ArrayDataset(x, y), PGD(eps=eps, steps=20), batch_size=7, keep_adversarials=True)
    should_break = int((dist[5:] < eps * 0.999).sum())
    robust = 25 - should_break
    assert res.robust_accuracy.value == pytest.approx(robust / 30)
    assert res.attack_success_rate.value == pytest.approx(should_break / 25)
    assert (res.robust_accuracy.ci_low, res.robust_accuracy.ci_high) == pytest.approx(clopper_pearson(robust, 30))
    med = res.median_perturbation_norm
    assert med is not None and med.ci_low <= med.value <= min(med.ci_high, eps + 1e-6) and med.n == should_break
    assert res.x_adv is not None and res.x_adv.shape == x.shape
    assert torch.equal(res.x_adv[:5], x[:5])  # clean errors are not attacked


def test_median_perturbation_norm_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    ok = torch.ones(4, dtype=torch.bool)
    s = summarize_attack(ok, ~ok, torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64), "l2", n_boot=50)
    assert s.median_perturbation_norm is not None and s.median_perturbation_norm.value == pytest.approx(0.25)


def test_loader_style_batches() -> None:
    model, x, y = _linear_data()
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 30, 8)]
    a = evaluate(model, batches, FGSM(eps=0.05))
    b = evaluate(model, (x, y), FGSM(eps=0.05))
    assert a.robust_accuracy == b.robust_accuracy
    with pytest.raises(InputError):
        evaluate(model, [], FGSM(eps=0.05))


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.dropout(x, 0.5, training=True))  # random even in eval mode


class _Quantised(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)  # zero gradient almost everywhere


def test_sanity_flags() -> None:
    model, x, y = _linear_data()
    assert sanity_flags(model, x, y) == {}
    assert "randomized_outputs" in sanity_flags(_Noisy(model), x, y)
    assert "zero_gradients" in sanity_flags(_Quantised(model), x, y)
    res = evaluate(_Quantised(model), (x, y), FGSM(eps=0.05))
    assert "zero_gradients" in res.warnings


def test_autoattack_reports_square_beating_white_box() -> None:
    model, x, y = _linear_data()
    res = evaluate(_Quantised(model), (x, y), create("autoattack", eps=0.3, steps=5, n_queries=200))
    assert "square_beats_white_box" in res.warnings
    assert res.broken_by.get("square", 0) > 0


def test_every_data_form_gives_the_same_result() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = _linear_data()
    attack = PGD(eps=0.05, steps=3, random_start=True)
    want = evaluate(model, ArrayDataset(x, y), attack, batch_size=8, keep_adversarials=True)
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=8), (x, y)):
        got = evaluate(model, data, attack, batch_size=8, keep_adversarials=True)
        assert got.robust_accuracy == want.robust_accuracy and got.clean_accuracy == want.clean_accuracy
        assert got.x_adv is not None and want.x_adv is not None and torch.equal(got.x_adv, want.x_adv)
    with pytest.raises(InputError, match="data: cannot read data of type str"):
        evaluate(model, "test.npz", attack)  # type: ignore[arg-type]


def test_the_generator_runs_on_across_batches() -> None:
    """Each batch draws fresh random starts: the same inputs in two batches are not attacked alike."""
    from mlsafety.core import generator

    model, x, y = _linear_data()
    attack = PGD(eps=0.05, steps=1, step_size=1e-4, random_start=True)
    res = evaluate(model, (torch.cat([x, x]), torch.cat([y, y])), attack, batch_size=30, keep_adversarials=True)
    assert res.x_adv is not None and not torch.equal(res.x_adv[5:30], res.x_adv[35:])
    a = evaluate(model, (x, y), attack, keep_adversarials=True, generator=generator(0, "a"))
    b = evaluate(model, (x, y), attack, keep_adversarials=True, generator=generator(0, "a"))
    c = evaluate(model, (x, y), attack, keep_adversarials=True, generator=generator(0, "c"))
    assert a.x_adv is not None and b.x_adv is not None and c.x_adv is not None
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
