"""The robustness pillar's summaries from precomputed outcomes: evaluate_outputs / summarize_attack
(robust accuracy, success rate, median perturbation norm) and summarize_certificates."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import InputError
from mlsafety.metrics import clopper_pearson
from mlsafety.robustness._evaluate import evaluate_outputs, summarize_attack, summarize_certificates
from mlsafety.robustness.smoothing import ABSTAIN, Certificate


def _outcomes() -> tuple[torch.Tensor, ...]:
    """Ten inputs: 0-1 wrong clean, 2-5 broken by the attack, 6-9 robust."""
    y = torch.zeros(10, dtype=torch.long)
    pred_clean = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    pred_adv = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # input 0 "fixed" by the attack: still not robust
    x = torch.zeros(10, 1, 2, 2)
    delta = torch.zeros(10, 1, 2, 2)
    for i, m in zip(range(2, 6), (0.1, 0.4, 0.2, 0.3)):
        delta[i, 0, 0, 0] = m
        delta[i, 0, 1, 1] = -m  # L-inf m, L2 m * sqrt(2)
    return pred_clean, pred_adv, y, x, x + delta


def test_counts_intervals_and_median_by_hand() -> None:
    pred_clean, pred_adv, y, x, x_adv = _outcomes()
    s = evaluate_outputs(pred_clean, pred_adv, y, "linf", x, x_adv, n_boot=200, seed=1)
    assert (s.clean_accuracy.value, s.clean_accuracy.n) == (0.8, 10)
    assert s.robust_accuracy.value == pytest.approx(0.4)  # input 0 is right under attack but wrong clean
    assert (s.robust_accuracy.ci_low, s.robust_accuracy.ci_high) == pytest.approx(clopper_pearson(4, 10))
    assert s.attack_success_rate is not None and s.attack_success_rate.value == pytest.approx(4 / 8)
    assert s.attack_success_rate.n == 8
    med = s.median_perturbation_norm
    assert med is not None and med.n == 4
    assert med.value == pytest.approx(0.25)  # the median of 0.1, 0.2, 0.3, 0.4: the mean of the middle two
    assert 0.1 - 1e-6 <= med.ci_low <= med.value <= med.ci_high <= 0.4 + 1e-6  # float32 inputs
    assert s.broken.tolist() == [False, False, True, True, True, True, False, False, False, False]
    l2 = evaluate_outputs(pred_clean, pred_adv, y, "l2", x, x_adv, n_boot=200, seed=1).median_perturbation_norm
    assert l2 is not None and l2.value == pytest.approx(0.25 * 2**0.5)


def test_without_inputs_or_breaks_there_is_no_median_and_the_seed_repeats() -> None:
    pred_clean, pred_adv, y, x, x_adv = _outcomes()
    assert evaluate_outputs(pred_clean, pred_adv, y, "linf").median_perturbation_norm is None
    none_broken = evaluate_outputs(pred_clean, pred_clean, y, "linf", x, x)
    assert none_broken.median_perturbation_norm is None and none_broken.attack_success_rate is not None
    assert none_broken.attack_success_rate.value == 0.0
    all_wrong = summarize_attack(torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool), None, "l2")
    assert all_wrong.attack_success_rate is None and all_wrong.robust_accuracy.value == 0.0
    a = evaluate_outputs(pred_clean, pred_adv, y, "linf", x, x_adv, n_boot=50, seed=3).median_perturbation_norm
    b = evaluate_outputs(pred_clean, pred_adv, y, "linf", x, x_adv, n_boot=50, seed=3).median_perturbation_norm
    assert a == b


def test_bad_inputs_are_refused() -> None:
    pred_clean, pred_adv, y, _, _ = _outcomes()
    with pytest.raises(InputError, match="norm must be"):
        evaluate_outputs(pred_clean, pred_adv, y, "l1")
    with pytest.raises(InputError, match="one length"):
        evaluate_outputs(pred_clean, pred_adv[:5], y, "linf")


def test_certificate_summary_by_hand() -> None:
    cert = Certificate(
        prediction=torch.tensor([0, 1, ABSTAIN, 2]),
        radius=torch.tensor([0.5, 0.3, 0.0, 0.1], dtype=torch.float64),
        p_lower=torch.tensor([0.9, 0.8, 0.4, 0.6], dtype=torch.float64),
        samples=torch.full((4,), 100),
    )
    y = torch.tensor([0, 1, 1, 0])  # the last prediction is wrong
    s = summarize_certificates(cert, y, [0.0, 0.25, 0.4], n_boot=300, seed=0)
    assert [r for r, _ in s.certified_accuracy] == [0.0, 0.25, 0.4]
    assert [e.value for _, e in s.certified_accuracy] == [0.5, 0.5, 0.25]
    assert s.certified_accuracy[2][1].ci_high == pytest.approx(clopper_pearson(1, 4)[1])
    assert s.abstain_rate.value == 0.25
    assert s.mean_certified_radius.value == pytest.approx((0.5 + 0.3) / 4)  # wrong or abstained count 0
    assert s.mean_certified_radius.ci_low <= s.mean_certified_radius.value <= s.mean_certified_radius.ci_high
    with pytest.raises(InputError, match="labels"):
        summarize_certificates(cert, y[:3], [0.0])
