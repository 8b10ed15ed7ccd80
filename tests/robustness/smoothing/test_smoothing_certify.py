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


def test_certify_is_cohen_et_al_step_by_step() -> None:
    # Replay CERTIFY by hand with the same generator: the guess from n0 selection samples, then the
    # top count from n *fresh* estimation samples (not the selection ones), the one-sided
    # Clopper-Pearson bound at alpha (the alpha quantile of Beta(k, n - k + 1); a two-sided bound at
    # alpha would be the alpha / 2 quantile), and the radius sigma * Phi^-1(pA_lower) via scipy.
    model = Halfspace().eval()
    x = torch.cat([_inputs(6), torch.full((1, 1, 4, 4), 0.5)])  # the last one sits close to the boundary
    sigma, n0, n, alpha = 0.5, 30, 300, 0.01
    g = SmoothedClassifier(model, 2, sigma=sigma, batch_size=128)
    cert = g.certify(x, n0=n0, n=n, alpha=alpha, generator=generator(0, "replay"))
    gen = generator(0, "replay")
    guess = g.sample_counts(x, n0, gen).argmax(dim=1)
    counts = g.sample_counts(x, n, gen)
    k = counts.gather(1, guess[:, None])[:, 0].numpy()
    p_lower = stats.beta.ppf(alpha, k, n - k + 1)
    assert 0 < k.min() < n  # some inputs are not certain, so the bound is not trivial
    assert torch.allclose(cert.p_lower, torch.from_numpy(p_lower), rtol=0, atol=1e-12)
    ok = p_lower > 0.5
    assert ok.any() and (~ok).any()
    radius = torch.from_numpy(sigma * stats.norm.ppf(p_lower).clip(min=0) * ok)
    assert torch.allclose(cert.radius, radius, rtol=1e-9, atol=1e-12)
    assert torch.equal(cert.prediction, torch.where(torch.from_numpy(ok), guess, ABSTAIN))


def test_certify_of_a_constant_classifier_has_the_closed_form_radius() -> None:
    # f always says class 1: all n estimation samples agree, pA_lower = alpha^(1/n) (one-sided, at
    # alpha) and the radius is sigma * Phi^-1(alpha^(1/n)); at n = 100, alpha = 0.001 that is 0.933
    # and, with sigma = 0.25, 0.3751 (a two-sided bound would give 0.3631, sigma = 1 would give 1.500).
    model = Halfspace(c=100.0).eval()
    g = SmoothedClassifier(model, 2, sigma=0.25)
    cert = g.certify(_inputs(3), n0=10, n=100, alpha=0.001, generator=generator(0, "const"))
    assert torch.equal(cert.prediction, torch.ones(3, dtype=torch.long))
    assert torch.allclose(cert.p_lower, torch.full((3,), 0.001 ** (1 / 100), dtype=torch.float64), atol=1e-12)
    expected = 0.25 * stats.norm.ppf(0.001 ** (1 / 100))
    assert abs(expected - 0.3751) < 1e-4
    assert torch.allclose(cert.radius, torch.full((3,), expected, dtype=torch.float64), atol=1e-9)


def test_certify_draws_selection_and_estimation_samples_separately() -> None:
    # n0 + n noisy copies per input go through the model, never n alone (selection samples reused).
    model = Halfspace().eval()
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _m, inp: rows.append(inp[0].shape[0]))
    cert = SmoothedClassifier(model, 2, sigma=0.5).certify(_inputs(3), n0=40, n=250, generator=generator(0, "rows"))
    assert sum(rows) == 3 * (40 + 250)
    assert (cert.samples == 250).all()


def test_abstentions_count_as_wrong_in_certified_accuracy() -> None:
    from mlsafety.robustness.smoothing import Certificate, certified_accuracy_curve

    pred = torch.tensor([ABSTAIN, 1, 0, 2, 1])
    radius = torch.tensor([0.0, 0.5, 0.2, 0.3, 0.1], dtype=torch.float64)
    cert = Certificate(pred, radius, torch.full((5,), 0.6, dtype=torch.float64), torch.full((5,), 10))
    labels = torch.tensor([0, 1, 1, 2, 1])
    curve = certified_accuracy_curve(cert, labels, [0.0, 0.2, 0.4])
    assert curve[0.0].tolist() == [False, True, False, True, True]  # the abstention is wrong even at radius 0
    assert curve[0.2].tolist() == [False, True, False, True, False]  # radius >= r counts (0.2 is not at 0.2)
    assert curve[0.4].tolist() == [False, True, False, False, False]


def test_predict_is_the_two_sided_binomial_test_of_the_top_two_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # PREDICT tests nA against nA + nB (the top two only) at p = 1/2, two-sided. Counts (60, 40):
    # p = 0.057, abstain at alpha = 0.05 (one-sided, 0.028, would not); (50, 30, 20): nA + nB = 80,
    # p = 0.033, predict (testing 50 of all 100 would give p = 1 and abstain).
    g = SmoothedClassifier(Halfspace(), 3, sigma=0.25)
    counts = torch.tensor([[60, 40, 0], [50, 30, 20], [0, 30, 70], [0, 59, 41]])
    monkeypatch.setattr(g, "sample_counts", lambda x, num, gen=None: counts)
    x = torch.zeros(4, 1, 4, 4)
    assert stats.binomtest(60, 100, 0.5).pvalue > 0.05 > stats.binomtest(50, 80, 0.5).pvalue
    assert g.predict(x, n=100, alpha=0.05).tolist() == [ABSTAIN, 0, 2, ABSTAIN]
    assert g.predict(x, n=100, alpha=0.1).tolist() == [0, 0, 2, 1]  # (59, 41): p = 0.089


def test_confidence_sequence_endpoints_solve_the_mixture_boundary() -> None:
    # The (1 - alpha) beta-binomial sequence is {p : B(a + k, b + n - k) / B(a, b) < p^k (1 - p)^(n - k) / alpha}:
    # the mixture martingale stays under 1 / alpha. Its endpoints, found here by a root finder, match.
    from scipy import optimize, special

    alpha, (a, b) = 0.05, (1.0, 2.0)
    ks, ns = torch.tensor([3, 40, 95, 0]), torch.tensor([10, 50, 100, 20])
    lo, hi = beta_binomial_cs(ks, ns, alpha, prior=(a, b))
    for k, n, low, high in zip(ks.tolist(), ns.tolist(), lo.tolist(), hi.tolist()):
        level = special.betaln(a + k, b + n - k) - special.betaln(a, b) + float(torch.tensor(alpha).log())

        def gap(p: float, k: int = k, n: int = n, level: float = level) -> float:
            return float(special.xlogy(k, p) + special.xlog1py(n - k, -p)) - level

        phat = k / n
        exp_lo = 0.0 if gap(0.0) > 0 else optimize.brentq(gap, 0.0, phat)
        exp_hi = optimize.brentq(gap, phat, 1.0 - 1e-15)
        assert abs(low - exp_lo) < 1e-7 and abs(high - exp_hi) < 1e-7


def test_a_model_with_more_classes_than_num_classes_is_refused() -> None:
    # Counts are kept as one flat bincount over (input, class): a class index >= num_classes would
    # silently be counted for the next input, so such a model must raise instead.
    # (Before the check, these two inputs came back as counts [[0], [40]].)
    model = Halfspace().eval()
    x = torch.zeros(2, 1, 4, 4)
    x[0, ..., 2:, :] = 1.0  # class 1, far from the boundary
    x[1, ..., :2, :] = 1.0  # class 0, far from the boundary
    g = SmoothedClassifier(model, 1, sigma=0.1)  # told there is one class
    with pytest.raises(InputError, match="num_classes"):
        g.sample_counts(x, 20, generator(0, "k"))
