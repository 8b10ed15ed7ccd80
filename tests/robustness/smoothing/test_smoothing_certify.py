"""Randomized smoothing: known answers on a linear model, bounds, abstention, sequential mode, chores."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from mlsafety.core import InputError, generator
from mlsafety.robustness.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    beta_binomial_cs,
    clopper_pearson_lower,
    gaussian_augment,
    smoothed_pgd_l2,
    train_noisy_classifier,
)


class Halfspace(nn.Module):
    """Two classes split by the hyperplane w.x + c = 0 (on flattened 1x4x4 inputs); logits (-s, s)."""

    def __init__(self, c: float = 0.0) -> None:
        super().__init__()
        self.w = torch.linspace(-1.0, 1.0, 16)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([-self.w, self.w]))
            self.fc.bias.copy_(torch.tensor([-c, c]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(x.flatten(1))[:, 1]

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return (self.score(x).abs() / self.w.norm()).double()


def _inputs(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=generator(0, "halfspace-inputs"))


def test_certified_radius_matches_distance_to_hyperplane() -> None:
    # For a linear base classifier smoothing is exact: pA = Phi(d / sigma), so the certified radius
    # sigma * Phi^-1(pA_lower) must stay below the distance d and approach it as n grows.
    model = Halfspace().eval()
    x = _inputs()
    d = model.distance(x)
    g = SmoothedClassifier(model, 2, sigma=0.5)
    cert = g.certify(x, n0=50, n=20_000, alpha=0.001, generator=generator(0, "t"))
    truth = (model.score(x) > 0).long()
    ok = cert.prediction != ABSTAIN
    assert ok.sum() >= 4
    assert torch.equal(cert.prediction[ok], truth[ok])
    assert (cert.radius[ok] <= d[ok] + 1e-9).all()
    # The bound is within the sampling error of the exact pA: its radius is close to d.
    pa = torch.from_numpy(stats.norm.cdf(d.numpy() / 0.5))
    assert ((pa - cert.p_lower)[ok] < 0.02).all()
    assert (cert.samples == 20_000).all()


def test_the_certificate_uses_the_metrics_clopper_pearson() -> None:
    # The module that certifies (not only the package's re-export) calls the one Clopper-Pearson.
    from mlsafety import metrics
    from mlsafety.robustness.smoothing import _sequential, base

    assert base.clopper_pearson_lower is metrics.clopper_pearson_lower
    assert not any(n.startswith("clopper") and getattr(_sequential, n) is not getattr(metrics, n, None)
                   for n in vars(_sequential))  # fmt: skip


def test_predict_abstains_on_a_coin_flip_and_not_far_from_the_boundary() -> None:
    model = Halfspace(c=-0.5 * float(torch.linspace(-1.0, 1.0, 16).sum())).eval()  # x = 0.5 lies on the boundary
    on_boundary = torch.full((4, 1, 4, 4), 0.5)
    far = torch.zeros(1, 1, 4, 4)
    far[..., 2:, :] = 1.0  # w.x > b: class 1, many sigmas away
    g = SmoothedClassifier(model, 2, sigma=0.25)
    pred = g.predict(torch.cat([on_boundary, far]), n=400, alpha=0.001, generator=generator(0, "p"))
    assert (pred[:4] == ABSTAIN).sum() >= 3
    assert int(pred[4]) == 1


def test_confidence_sequence_covers_uniformly_over_time() -> None:
    # 400 sequences of 300 Bernoulli(0.7) draws: the share that ever leaves the sequence stays under alpha.
    alpha, p, runs, steps = 0.1, 0.7, 400, 300
    draws = (torch.rand(runs, steps, generator=generator(0, "cs")) < p).long()
    k = draws.cumsum(dim=1)
    n = torch.arange(1, steps + 1).expand(runs, steps)
    lo, hi = beta_binomial_cs(k.flatten(), n.flatten(), alpha)
    missed = ((lo > p) | (hi < p)).view(runs, steps).any(dim=1).double().mean()
    assert missed <= alpha
    # ... and it is not trivially wide: after 300 draws it excludes 0.5 and 0.9.
    assert (lo.view(runs, steps)[:, -1] > 0.5).float().mean() > 0.9
    assert (hi.view(runs, steps)[:, -1] < 0.9).float().mean() > 0.9
    # The sequence pays for validity at every time: wider than the fixed-n Clopper-Pearson bound.
    kk = torch.tensor([250])
    assert float(beta_binomial_cs(kk, torch.tensor([300]), 0.01)[0]) < float(clopper_pearson_lower(kk, 300, 0.01))


def test_sequential_mode_certifies_the_same_inputs_with_fewer_samples() -> None:
    model = Halfspace().eval()
    x = _inputs(8)
    g = SmoothedClassifier(model, 2, sigma=0.25)
    radius = 0.05
    fixed = g.certify(x, n0=50, n=4000, alpha=0.001, generator=generator(0, "fixed"))
    seq = g.certify_sequential(x, n0=50, n_max=4000, alpha=0.001, radius=radius, generator=generator(0, "seq"))
    d = model.distance(x)
    clear = (d > 2 * radius) | (d < radius / 2)  # inputs whose answer at `radius` is not a close call
    assert clear.sum() >= 5
    assert torch.equal((fixed.radius >= radius)[clear], (seq.radius >= radius)[clear])
    assert seq.samples.double().mean() < 0.5 * 4000
    assert (seq.radius <= d + 1e-9).all()


def test_noise_is_drawn_in_batches_and_counts_add_up() -> None:
    model = Halfspace().eval()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape[0]))
    g = SmoothedClassifier(model, 2, sigma=0.25, batch_size=64)
    counts = g.sample_counts(_inputs(3), 150, generator(0, "b"))
    assert counts.sum(dim=1).tolist() == [150, 150, 150]
    assert max(seen) <= 64 and sum(seen) == 450


def test_same_generator_seed_same_certificate_and_model_restored() -> None:
    model = Halfspace().train()
    flags = [p.requires_grad for p in model.parameters()]
    x = _inputs()
    x_copy = x.clone()
    g = SmoothedClassifier(model, 2, sigma=0.5)
    a = g.certify(x, 20, 200, 0.01, generator=generator(1, "s"))
    b = g.certify(x, 20, 200, 0.01, generator=generator(1, "s"))
    assert torch.equal(a.radius, b.radius) and torch.equal(a.prediction, b.prediction)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_copy)


def test_denoiser_is_applied_before_the_model() -> None:
    model = Halfspace().eval()
    x = _inputs(4)
    ones = nn.Sequential(nn.Flatten(0), nn.Unflatten(0, (-1, 1, 4, 4)))  # identity
    same = SmoothedClassifier(model, 2, 0.5, denoiser=ones).certify(x, 20, 300, 0.01, generator=generator(0, "d"))
    plain = SmoothedClassifier(model, 2, 0.5).certify(x, 20, 300, 0.01, generator=generator(0, "d"))
    assert torch.equal(same.radius, plain.radius)

    class ToClassOne(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(z)
            out[..., 2:, :] = 1.0
            return out

    fixed = SmoothedClassifier(model, 2, 0.5, denoiser=ToClassOne()).certify(x, 20, 300, 0.01, generator=generator(0))
    assert (fixed.prediction == 1).all()


def test_bad_arguments_raise_input_error() -> None:
    g = SmoothedClassifier(Halfspace(), 2, 0.5)
    with pytest.raises(InputError):
        SmoothedClassifier(Halfspace(), 2, sigma=0.0)
    with pytest.raises(InputError):
        g.certify(_inputs(), n0=0)
    with pytest.raises(InputError):
        g.predict(_inputs(), alpha=1.5)
    with pytest.raises(InputError):
        g.certify(_inputs() * 3)


def test_smoothed_pgd_stays_in_the_ball_and_box() -> None:
    model = Halfspace().eval()
    x = _inputs(4)
    g = SmoothedClassifier(model, 2, 0.25)
    eps = torch.tensor([0.1, 0.2, 0.3, 0.4])
    x_adv = smoothed_pgd_l2(g, x, torch.zeros(4, dtype=torch.long), eps, steps=5, m=8, generator=generator(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_gaussian_augment_adds_noise_of_the_right_scale() -> None:
    x = torch.full((4000, 1, 2, 2), 0.5)
    out = gaussian_augment(0.3)(x, generator(0, "aug"))
    assert abs(float((out - x).std()) - 0.3) < 0.01
    assert abs(float((out - x).mean())) < 0.01


def test_noise_training_recipe_returns_a_trained_model_in_eval_mode(tiny_net, tiny_data) -> None:  # type: ignore[no-untyped-def]
    before = [p.detach().clone() for p in tiny_net.parameters()]
    out = train_noisy_classifier(tiny_net, tiny_data, sigma=0.25, epochs=1)
    assert out is tiny_net and not out.training
    assert any(not torch.equal(a, b) for a, b in zip(before, out.parameters()))


def test_noise_training_is_the_one_loop_with_shift_then_noise(tiny_data) -> None:  # type: ignore[no-untyped-def]
    from mlsafety.core import random_shift, train

    def net() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    a = train_noisy_classifier(net(), tiny_data, sigma=0.5, epochs=2, seed=3, lr=1e-2, batch_size=8)
    b = train(net(), tiny_data, epochs=2, seed=3, lr=1e-2, batch_size=8, augment=gaussian_augment(0.5, random_shift))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # the noise is part of the recipe: without it (or with another sigma) the weights differ
    c = train(net(), tiny_data, epochs=2, seed=3, lr=1e-2, batch_size=8, augment=random_shift)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_sample_until_decided_stops_each_input_on_its_own_evidence() -> None:
    from mlsafety.robustness.smoothing import sample_until_decided

    calls: list[tuple[list[int], int]] = []
    rates = torch.tensor([1.0, 0.0, 0.5])  # clearly above, clearly below, exactly at the target

    def hits(idx: torch.Tensor, step: int) -> torch.Tensor:
        calls.append((idx.tolist(), step))
        return (rates[idx] * step).round().long()

    lower, used = sample_until_decided(hits, 3, 5000, 0.01, 0.5, 30, (1.0, 1.0), torch.device("cpu"))
    assert used[2] == 5000 and used[0] < 200 and used[1] < 200  # the undecidable one runs to n_max
    assert lower[0] > 0.5 and lower[1] < 0.5 and lower[2] < 0.5
    assert all(step <= 5000 for _, step in calls) and calls[-1][0] == [2]
    assert int(used.max()) == sum(step for idx, step in calls if 2 in idx)
