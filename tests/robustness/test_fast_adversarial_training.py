"""Fast adversarial training (FGSM from a random start, Wong et al. 2020): the step, the guard, and
that it buys robustness on a small planted problem."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, InputError, generator, rand_like, train
from mlsafety.robustness import evaluate
from mlsafety.robustness.attacks import PGD
from mlsafety.robustness.training import fast_adversarial_training, fgsm_rs


class _Linear2(nn.Module):
    """Two logits ``(0, w . x)``: the cross-entropy's input gradient for label 0 has the sign of ``w``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.drop(x.flatten(1)) @ self.w.flatten()
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_fgsm_rs_is_one_step_of_125_eps_from_the_random_start_projected() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5], [-0.3, 4.0, -1.0]]).view(1, 2, 3)
    model = _Linear2(w).train()
    x = torch.tensor([[0.5, 0.5, 0.02, 0.98, 0.5, 0.0]]).view(1, 1, 2, 3).repeat(4, 1, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    eps = 0.1
    x_adv = fgsm_rs(model, x, y, eps, generator(3, "t"))
    # by hand: the start u ~ U(-eps, eps) (cut to [0, 1]), then + 1.25 eps sign(w), onto the ball, into [0, 1]
    u = (2 * rand_like(x, generator(3, "t")) - 1) * eps
    u = (x + u).clamp(0, 1) - x
    expect = (x + (u + 1.25 * eps * w.sign()).clamp(-eps, eps)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expect, rtol=0, atol=1e-6)
    delta = x_adv - x
    assert float(delta.abs().max()) <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    inside = (x > eps) & (x < 1 - eps)  # away from the borders every pixel moves >= 0.25 eps the gradient's way
    assert bool(((delta * w.sign())[inside] >= 0.25 * eps - 1e-6).all())
    # a larger step lands every inside pixel on the ball's face
    far = fgsm_rs(model, x, y, eps, generator(3, "t"), step_size=2 * eps) - x
    torch.testing.assert_close(far[inside], (eps * w.sign()).expand_as(x)[inside])
    assert model.training and model.w.grad is None  # the mode is restored, no parameter gradients


def _problem() -> tuple[ArrayDataset, ArrayDataset, ArrayDataset, nn.Module]:
    # Two classes that differ by a thin stripe (perfectly predictive, flipped by eps 0.15) and a
    # broad blob (robust at eps 0.15): clean training may use the stripe, adversarial training must use the blob.
    g = torch.Generator().manual_seed(0)
    n = 240
    y = torch.arange(n) % 2
    x = 0.5 + 0.05 * torch.randn(n, 1, 4, 4, generator=g)
    sign = (2 * y - 1).float()[:, None]
    x[:, 0, 0, :] += 0.06 * sign
    x[:, 0, 2:, :] += 0.2 * sign[:, :, None]
    x = x.clamp(0, 1)
    train_set = ArrayDataset(x[:120], y[:120], name="toy")
    holdout = ArrayDataset(x[120:180], y[120:180], name="toy")
    test = ArrayDataset(x[180:], y[180:], name="toy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    return train_set, holdout, test, model


def test_fast_at_is_seeded_keeps_its_best_epoch_and_raises_robust_accuracy() -> None:
    train_set, holdout, test, model = _problem()
    settings = dict(eps=0.15, epochs=12, lr=0.01, batch_size=32, holdout=holdout, check_steps=5)
    history: list[tuple[int, float]] = []
    a = fast_adversarial_training(copy.deepcopy(model), train_set, seed=1, history=history, **settings)
    b = fast_adversarial_training(copy.deepcopy(model), train_set, seed=1, **settings)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not a.training
    # one check per epoch, and the returned weights are the best-checked epoch's
    assert [e for e, _ in history] == list(range(1, 13))
    check = PGD(eps=0.15, steps=5, early_stop=False)
    x_adv = check(a, holdout.x, holdout.y, generator=generator(1, "fast-at-check"))
    kept = float((a(x_adv).argmax(1) == holdout.y).float().mean())
    assert kept == pytest.approx(max(acc for _, acc in history), abs=1e-9)
    attack = PGD(eps=0.15, steps=10)
    clean = train(copy.deepcopy(model), train_set, epochs=12, lr=0.01, batch_size=32, seed=1)
    hardened = evaluate(a, test, attack).robust_accuracy.value
    plain = evaluate(clean, test, attack).robust_accuracy.value
    assert hardened > plain + 0.2


def test_fast_at_stops_when_the_pgd_accuracy_collapses() -> None:
    train_set, holdout, _, model = _problem()
    history: list[tuple[int, float]] = []
    # collapse_ratio near 1: any fall in the checked accuracy counts as a collapse and ends training
    out = fast_adversarial_training(copy.deepcopy(model), train_set, eps=0.15, epochs=30, lr=0.05, batch_size=32,
                                    holdout=holdout, check_steps=5, collapse_ratio=0.999, history=history)  # fmt: skip
    accs = [acc for _, acc in history]
    best_before = [max(accs[: i + 1]) for i in range(len(accs))]
    assert all(acc >= 0.999 * best_before[i - 1] for i, acc in enumerate(accs[:-1]) if i)
    assert 2 <= len(accs) < 30 and accs[-1] < 0.999 * best_before[-2]  # stopped at the first fall
    assert not out.training


def test_fast_at_input_checks() -> None:
    train_set, _, _, model = _problem()
    with pytest.raises(InputError, match="eps in"):
        fast_adversarial_training(model, train_set, eps=0.0)
    with pytest.raises(InputError, match="collapse_ratio"):
        fast_adversarial_training(model, train_set, eps=0.1, collapse_ratio=1.5)
