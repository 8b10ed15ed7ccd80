"""The simulated world, the exact KL-regularised optimum and the REINFORCE run."""

from __future__ import annotations

import math

import pytest
import torch

from mlsafety.core import InputError, generator
from mlsafety.monitoring.proxy_gaming import (
    best_of_n_exact,
    kl_regularised,
    make_world,
    reinforce,
    standardise,
    train_proxy,
)


def test_world_and_proxies_are_standardised_under_pi0_and_seeded(world) -> None:  # type: ignore[no-untyped-def]
    p = train_proxy(world, 50, width=16, seed=1)
    for r in (world.gold, p):
        assert float(world.pi0 @ r) == pytest.approx(0.0, abs=1e-9)
        assert float(world.pi0 @ r**2) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(p, train_proxy(world, 50, width=16, seed=1))
    assert not torch.equal(p, train_proxy(world, 50, width=16, seed=2))
    torch.testing.assert_close(make_world(64, 4, seed=5).gold, make_world(64, 4, seed=5).gold)


def test_more_labels_give_a_better_proxy(world) -> None:  # type: ignore[no-untyped-def]
    def corr(n: int) -> float:
        return sum(float(world.pi0 @ (train_proxy(world, n, seed=s) * world.gold)) for s in range(5)) / 5

    assert corr(1000) > corr(20) + 0.05


def test_best_of_n_gold_peaks_and_falls_while_the_proxy_rises(world) -> None:  # type: ignore[no-untyped-def]
    proxy = train_proxy(world, 30, label_noise=1.0, seed=0)
    c = best_of_n_exact(world.pi0, proxy, world.gold, range(1, 257))
    assert bool((c.proxy[1:] >= c.proxy[:-1] - 1e-12).all())
    peak = int(c.gold.argmax())
    assert 0 < peak < 255
    assert float(c.gold[-1]) < float(c.gold[peak]) - 0.05


def test_kl_regularised_hand_answer_and_limits(world) -> None:  # type: ignore[no-untyped-def]
    c = kl_regularised(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0]), [1.0])
    p1 = math.e / (1 + math.e)
    assert float(c.probs[0, 1]) == pytest.approx(p1)
    assert float(c.gold[0]) == pytest.approx(2 * (1 - p1) - p1)
    assert float(c.kl[0]) == pytest.approx(p1 * math.log(2 * p1) + (1 - p1) * math.log(2 * (1 - p1)))
    proxy = train_proxy(world, 100, seed=0)
    c = kl_regularised(world.pi0, proxy, world.gold, [math.inf, 1e6, 1e-4])
    torch.testing.assert_close(c.probs[0], world.pi0)
    assert float(c.kl[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(c.kl[1]) < 1e-8
    top = int(proxy.argmax())
    assert float(c.probs[2, top]) > 0.999
    assert float(c.gold[2]) == pytest.approx(float(world.gold[top]), abs=1e-2)
    assert float(c.kl[2]) == pytest.approx(-math.log(float(world.pi0[top])), abs=1e-2)


def test_reinforce_raises_the_proxy_and_starts_at_pi0(world) -> None:  # type: ignore[no-untyped-def]
    proxy = train_proxy(world, 100, seed=0)
    run = reinforce(world.pi0, proxy, world.gold, features=world.features, steps=40, lr=0.02, checkpoint_every=10)
    assert run.step.tolist() == [0, 10, 20, 30, 40]
    assert float(run.kl[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(run.proxy[-1]) > float(run.proxy[0]) + 0.3
    assert float(run.kl[-1]) > 0.05
    again = reinforce(world.pi0, proxy, world.gold, features=world.features, steps=40, lr=0.02, checkpoint_every=10)
    torch.testing.assert_close(run.gold, again.gold)
    tab = reinforce(world.pi0, proxy, world.gold, steps=20, lr=0.05, checkpoint_every=20)
    assert float(tab.proxy[-1]) > float(tab.proxy[0])
    odd = reinforce(world.pi0, proxy, world.gold, features=world.features, steps=25, lr=0.02, checkpoint_every=10)
    assert odd.step.tolist() == [0, 10, 20, 25]  # the final policy is recorded when steps is not a multiple


def test_reinforce_with_a_kl_penalty_reaches_the_tilted_optimum() -> None:
    # Korbak et al. 2022: the optimum of E[r] - lambda KL is pi0 exp(r / lambda) / Z; there every sample's
    # penalised reward is lambda log Z (advantage 0), so a tabular REINFORCE run settles on it exactly.
    g = generator(0, "pg-kl-test")
    pi0 = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    proxy, gold = torch.randn(2, 6, generator=g, dtype=torch.float64)
    exact = kl_regularised(pi0, proxy, gold, [0.5])
    run = reinforce(pi0, proxy, gold, steps=600, batch_size=128, lr=0.05, kl_coef=0.5, checkpoint_every=600)
    assert float(run.kl[-1]) == pytest.approx(float(exact.kl[0]), rel=1e-3)
    assert float(run.proxy[-1]) == pytest.approx(float(exact.proxy[0]), rel=1e-3, abs=1e-4)
    assert float(run.gold[-1]) == pytest.approx(float(exact.gold[0]), rel=1e-3, abs=1e-4)
    free = reinforce(pi0, proxy, gold, steps=600, batch_size=128, lr=0.05, checkpoint_every=600)
    assert float(free.kl[-1]) > 1.5 * float(exact.kl[0])  # without the penalty it runs past the optimum


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: kl_regularised(w.pi0, w.gold, w.gold, [0.0]), "lambda"),
        (lambda w: kl_regularised(w.pi0, w.gold, w.gold, [-1.0]), "lambda"),
        (lambda w: kl_regularised(w.pi0, w.gold, w.gold[:-1], [1.0]), "one shape"),
        (lambda w: kl_regularised(w.pi0, w.gold.clone().fill_(math.nan), w.gold, [1.0]), "finite"),
        (lambda w: reinforce(w.pi0, w.gold, w.gold, steps=0), "steps"),
        (lambda w: train_proxy(w, 1), "at least 2"),
        (lambda w: make_world(1), "at least 2 outputs"),
        (lambda w: standardise(torch.ones(3), torch.full((3,), 1 / 3)), "constant"),
    ],
)
def test_bad_input_is_one_line(world, call, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=match) as info:
        call(world)
    assert "\n" not in str(info.value)


def test_tilted_kl_is_mean_reward_over_lambda_minus_log_z_and_the_policy_is_the_optimum() -> None:
    g = generator(1, "tilted-identity")
    pi0 = torch.rand(7, generator=g, dtype=torch.float64)
    pi0[3] = 0.0  # an impossible output stays impossible
    pi0 = pi0 / pi0.sum()
    r = torch.randn(7, generator=g, dtype=torch.float64)
    lams = torch.tensor([0.2, 1.0, 4.0], dtype=torch.float64)
    c = kl_regularised(pi0, r, -r, lams)
    log_z = torch.logsumexp(torch.log(pi0)[None] + r[None] / lams[:, None], dim=1)
    torch.testing.assert_close(c.kl, c.proxy / lams - log_z, atol=1e-12, rtol=0)
    assert bool((c.probs[:, 3] == 0).all())
    torch.testing.assert_close(c.gold, -c.proxy)

    def objective(q: torch.Tensor, lam: float) -> float:  # E_q[r] - lambda KL(q || pi0) on q's support
        s = q > 0
        return float(q @ r - lam * (q[s] * torch.log(q[s] / pi0[s])).sum())

    for j, lam in enumerate(lams.tolist()):
        best = objective(c.probs[j], lam)
        assert best == pytest.approx(lam * float(log_z[j]), abs=1e-12)  # the optimum's value is lambda log Z
        for _ in range(20):  # any other policy on pi0's support does worse
            q = c.probs[j] * torch.exp(0.3 * torch.randn(7, generator=g, dtype=torch.float64))
            assert objective(q / q.sum(), lam) < best


def test_tilted_kl_is_taken_against_the_renormalised_pi0() -> None:
    # a float32 pi0 sums to 1 only within ~1e-7; the tilted policy is normalised, so its KL must be taken
    # against pi0 / sum(pi0) too, or it is off by -log(sum(pi0)): here 3.6e-8, a KL of 3.6e-8 instead of 0 at
    # lambda = inf and 7% too high at lambda = 1e3
    k = 3000
    g = generator(4, "tilted-f32")
    pi0 = torch.rand(k, generator=g)
    pi0 = pi0 / pi0.sum()  # float32
    r = torch.randn(k, generator=g, dtype=torch.float64)
    lams = [math.inf, 1e3, 1e2, 1.0]
    c = kl_regularised(pi0, r, -r, lams)
    ref = kl_regularised(pi0.double() / pi0.double().sum(), r, -r, lams)
    assert abs(float(c.kl[0])) <= 1e-12  # lambda = inf: the base policy itself (0 up to round-off)
    torch.testing.assert_close(c.kl, ref.kl, atol=1e-15, rtol=1e-9)
    torch.testing.assert_close(c.probs, ref.probs, atol=1e-15, rtol=1e-9)


def test_linear_proxy_recovers_a_linear_gold_from_noiseless_labels() -> None:
    # ridge with an unpenalised intercept: with a vanishing penalty and more labels than features it fits a
    # linear gold exactly (a fit without the intercept misses the gold's offset by ~0.1 here)
    w = make_world(256, 6, curvature=0.0, seed=1)
    p = train_proxy(w, 40, width=0, label_noise=0.0, ridge=1e-9, seed=0)
    torch.testing.assert_close(p, w.gold, atol=1e-8, rtol=0)


class _GradientRecorder:
    """Stands in for Adam: keeps each step's gradient in ``grads`` and never moves theta (every step is at pi0)."""

    def __init__(self, grads: list[torch.Tensor]) -> None:
        self.grads = grads

    def __call__(self, params, lr: float) -> _GradientRecorder:  # type: ignore[no-untyped-def]
        self.params = list(params)
        return self

    def zero_grad(self) -> None:
        self.params[0].grad = None

    def step(self) -> None:
        self.grads.append(self.params[0].grad.detach().clone())


@pytest.mark.parametrize("features", [False, True])
def test_reinforce_gradient_is_unbiased_with_a_leave_one_out_baseline(
    monkeypatch: pytest.MonkeyPatch, features: bool
) -> None:
    # at theta = 0 the exact gradient of E_pi[r] is phi^T (pi0 * (r - E_pi0 r)); a baseline that includes the
    # sample itself would shrink it by (1 - 1 / B), a half at B = 2
    recorded: list[torch.Tensor] = []
    monkeypatch.setattr(torch.optim, "Adam", _GradientRecorder(recorded))
    pi0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = torch.tensor([-1.0, 1.0, -2.0], dtype=torch.float64)
    phi = torch.tensor([[1.0, 0.0], [0.5, 1.0], [-1.0, -1.0]], dtype=torch.float64) if features else None
    reinforce(pi0, r, r, features=phi, steps=2000, batch_size=2, kl_coef=0.7, checkpoint_every=2000, seed=0)
    grads = -torch.stack(recorded)  # the loss is minus the objective
    exact = pi0 * (r - pi0 @ r)
    if phi is not None:
        exact = phi.T @ exact
    se = grads.std(0) / len(grads) ** 0.5
    assert bool(((grads.mean(0) - exact).abs() < 4 * se).all())
    assert bool(((grads.mean(0) - exact / 2).abs() > 6 * se).all())  # the half-size gradient is far outside
