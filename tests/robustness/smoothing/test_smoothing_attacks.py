"""The certified radius of the smoothed embedded model is never beaten by an attack (issue 8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import generator, randn_like
from mlsafety.robustness import attacks
from mlsafety.robustness.smoothing import (
    Certificate,
    SmoothedClassifier,
    SmoothedSoftmax,
    attack_certificates,
    registry_attack,
    smoothed_pgd_l2,
)

BUDGET = {"steps": 5, "n_queries": 40, "n_target_classes": 2, "restarts": 1}
L2_ATTACKS = [name for name in attacks.available() if "l2" in attacks.ATTACKS.get(name).norms]


@pytest.fixture(scope="module")
def certified(digits_model, digits_test):  # type: ignore[no-untyped-def]
    smoothed = SmoothedClassifier(digits_model, 10, sigma=0.25)
    x = digits_test.x[:6]
    cert = smoothed.certify(x, n0=64, n=500, alpha=0.001, generator=generator(0, "cert-test"))
    assert int((cert.prediction >= 0).sum()) >= 4
    return smoothed, x, cert


def _scaled(cert: Certificate, factor: float) -> Certificate:
    return Certificate(cert.prediction, cert.radius * factor, cert.p_lower, cert.samples)


def test_builtin_and_pgd_do_not_beat_the_certificate_but_do_beat_four_times_the_radius(certified) -> None:  # type: ignore[no-untyped-def]
    smoothed, x, cert = certified
    for attack in (None, registry_attack("pgd", steps=10)):
        inside = attack_certificates(smoothed, x, cert, attack=attack, n=500, generator=generator(0, "inside"))
        assert inside.attacked.numel() >= 4 and not inside.violated.any()
    # The same attacks are strong enough to matter: outside the certified ball they succeed.
    outside = attack_certificates(smoothed, x, _scaled(cert, 4.0), n=500, shrink=1.0, generator=generator(0, "out"))
    assert outside.violated.any()


@pytest.mark.slow
@pytest.mark.parametrize("name", L2_ATTACKS)
def test_no_registry_attack_beats_the_certified_radius(certified, name: str) -> None:  # type: ignore[no-untyped-def]
    smoothed, x, cert = certified
    sub = Certificate(cert.prediction[:3], cert.radius[:3], cert.p_lower[:3], cert.samples[:3])
    result = attack_certificates(
        smoothed, x[:3], sub, attack=registry_attack(name, **BUDGET), name=name, n=300, generator=generator(0, name)
    )
    assert not result.violated.any()
    assert (result.max_perturbation <= sub.radius[result.attacked] + 1e-4).all()


def test_smoothed_softmax_is_the_log_of_the_averaged_softmax() -> None:
    # SmoothAdv attacks the smoothed soft classifier: log E[softmax f(x + e)], not E[log softmax f(x + e)].
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(2, 1, 4, 4, generator=generator(0, "ss-x"))
    out = SmoothedSoftmax(SmoothedClassifier(model, 3, sigma=0.5), m=5, generator=generator(0, "ss"))(x)
    rep = x.repeat_interleave(5, dim=0)
    noisy = rep + randn_like(rep, generator(0, "ss")) * 0.5
    with torch.no_grad():
        probs = model(noisy).softmax(dim=1).view(2, 5, 3)
        logits = out.detach()
    assert torch.allclose(logits, probs.mean(dim=1).log(), atol=1e-6)
    assert not torch.allclose(logits, probs.log().mean(dim=1), atol=1e-3)


def test_smoothed_pgd_on_a_linear_model_steps_straight_away_from_the_label() -> None:
    # For two linear classes every noisy gradient of the smoothed cross-entropy points along
    # -+(w1 - w0), so the normalised steps end on the L2 sphere at x -+ eps * w / ||w|| (box not binding).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    w = (model[1].weight[1] - model[1].weight[0]).detach()
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4, generator=generator(0, "lin-x"))
    y = torch.tensor([0, 1, 0, 1])
    eps = 0.05 * float(w.norm() / w.abs().max())  # no coordinate moves by more than 0.05
    g = SmoothedClassifier(model, 2, sigma=0.25)
    x_adv = smoothed_pgd_l2(g, x, y, eps, steps=4, m=8, generator=generator(0, "lin"))
    sign = torch.where(y == 1, -1.0, 1.0).view(-1, 1)
    expected = x.flatten(1) + sign * eps * w / w.norm()
    assert torch.allclose(x_adv.flatten(1), expected, atol=1e-5)


def test_a_callers_attack_sees_the_certified_model_in_eval_mode_and_leaves_it_unchanged() -> None:
    """certify runs the base model in eval mode; a caller's attack on SmoothedSoftmax once ran it in the
    mode it was left in (train), so batch norm normalised by the noisy copies and updated its running
    statistics: the attack was on another model than the one certified, and the model changed."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    smoothed = SmoothedClassifier(base, 3, sigma=0.1)
    x = torch.full((2, 1, 2, 2), 0.5)
    cert = Certificate(torch.tensor([0, 1]), torch.tensor([0.1, 0.1], dtype=torch.float64),
                       torch.tensor([0.9, 0.9], dtype=torch.float64), torch.tensor([10, 10]))  # fmt: skip
    before = {k: v.clone() for k, v in base.state_dict().items()}
    modes = []

    def attack(module: nn.Module, xi: torch.Tensor, yi: torch.Tensor, eps: float) -> torch.Tensor:
        modes.append(base.training)
        module(xi)  # a forward pass, as any attack makes
        return xi

    attack_certificates(smoothed, x, cert, attack=attack, n=20, generator=generator(0, "mode"))
    assert modes == [False, False]
    assert base.training
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
