"""Tests that a wrong implementation of each attack would fail: closed forms, optima, invariants."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import generator
from mlsafety.robustness.attacks import (
    APGD,
    FABT,
    FGSM,
    PGD,
    AutoAttack,
    Square,
    create,
    dlr_loss,
    dlr_targeted_loss,
    lp_norm,
)
from mlsafety.robustness.attacks.apgd import _checkpoint_lengths
from mlsafety.robustness.attacks.base import project, random_start
from mlsafety.robustness.attacks.fab import boundary_step
from mlsafety.robustness.attacks.square import p_selection


def linear(k: int = 2, d: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).eval()


def interior(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Inputs in [0.3, 0.7] so that steps of 0.1 never touch the box."""
    return 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_fgsm_is_the_closed_form_sign_step() -> None:
    model = linear(k=3)
    x = interior()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    w = model[1].weight.detach()
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    grad = (p - F.one_hot(y, 3).float()) @ w  # d CE / d x for a linear model
    expected = (x + 0.1 * grad.sign().reshape(x.shape)).clamp(0, 1)
    assert torch.allclose(FGSM(eps=0.1)(model, x, y), expected, atol=1e-6)
    expected_l2 = x + 0.1 * (grad / grad.norm(dim=1, keepdim=True)).reshape(x.shape)
    assert torch.allclose(FGSM(eps=0.1, norm="l2")(model, x, y), expected_l2, atol=1e-6)


@pytest.mark.parametrize("cls", [PGD, APGD])
def test_pgd_and_apgd_reach_the_optimum_of_the_ball_on_a_linear_model(cls: type) -> None:
    # Two classes, logits (z0, z1); for y = 0 the CE grows with w . x where w = w1 - w0, so the
    # maximiser over the L-inf ball is x + eps * sign(w), over the L2 ball x + eps * w / ||w||.
    model = linear(k=2)
    with torch.no_grad():
        model[1].bias.zero_()
        model[1].weight[0].zero_()
    w = model[1].weight.detach()[1]
    x = interior()
    y = torch.zeros(8, dtype=torch.long)
    never = lambda logits, y, x: torch.zeros(len(y), dtype=torch.bool)  # noqa: E731  (never stop early)
    x_inf = cls(eps=0.1, steps=30, success=never)(model, x, y)
    assert torch.allclose(x_inf, x + 0.1 * w.sign().reshape(1, 1, 4, 4), atol=1e-5)
    kw_l2 = {"random_start": False} if cls is PGD else {}
    x_l2 = cls(eps=0.1, norm="l2", steps=30, success=never, **kw_l2)(model, x, y)
    assert torch.allclose(x_l2, x + 0.1 * (w / w.norm()).reshape(1, 1, 4, 4), atol=1e-3)


def _trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = _trained_mlp_cached()
    return copy.deepcopy(model), x.clone(), y.clone()


@functools.cache
def _trained_mlp_cached() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(4, 16, generator=g)
    y = torch.arange(48) % 4
    x = (centers[y] + 0.15 * torch.randn(48, 16, generator=g)).clamp(0, 1).reshape(48, 1, 4, 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def test_robust_accuracy_is_monotone_in_eps() -> None:
    model, x, y = _trained_mlp()
    accs = [
        _robust(model, create("apgd-ce", eps=e, steps=20)(model, x, y), y).float().mean().item()
        for e in (0.0, 0.05, 0.1, 0.2, 0.4)
    ]
    assert all(a >= b for a, b in itertools.pairwise(accs))
    assert accs[0] > 0.9 and accs[-1] < accs[0]


def test_restarts_keep_the_per_sample_worst_case() -> None:
    model, x, y = _trained_mlp()
    one = _robust(model, PGD(eps=0.08, steps=5, restarts=1, seed=1)(model, x, y), y)
    three = _robust(model, PGD(eps=0.08, steps=5, restarts=3, seed=1)(model, x, y), y)
    assert bool((three <= one).all())  # the first restart is shared; later ones only add breaks


def test_autoattack_is_never_weaker_than_its_parts() -> None:
    model, x, y = _trained_mlp()
    cfg = {"eps": 0.1, "steps": 10, "n_target_classes": 3, "n_queries": 100}
    full = AutoAttack(**cfg)
    res_full = full.run(model, x, y)
    robust_full = _robust(model, res_full.x_adv, y)
    members = AutoAttack.default_members
    for i in range(1, len(members)):
        part = AutoAttack(members=members[:i], **cfg)
        assert bool((robust_full <= _robust(model, part(model, x, y), y)).all())
    for name in members:  # and no fewer breaks than any member run on its own
        alone = _robust(model, full.build(name, 4)(model, x, y), y)
        assert int(robust_full.sum()) <= int(alone.sum())
    assert sum(res_full.broken_by.values()) == int((~robust_full & _robust(model, x, y)).sum())


def test_checkpoints_follow_the_paper() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): for 100 steps the
    # checkpoints are 22, 41, 57, 70, 80, 87, 93, 99.
    first, smallest, decrease = _checkpoint_lengths(100)
    checks, k, at = [], first, 0
    while at + k <= 100:
        at += k
        checks.append(at)
        k = max(k - decrease, smallest)
    assert checks == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_is_invariant_to_shift_and_scale_and_matches_hand_values() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    y = torch.tensor([0, 0])
    # row 0: -(3 - 1) / (3 - 0) ; row 1: -(0 - 2) / (2 - 0)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2 / 3, 1.0]))
    assert torch.allclose(dlr_loss(5 * z + 7, y), dlr_loss(z, y), atol=1e-6)
    t = torch.tensor([1, 2])
    # row 0: -(3 - 1) / (3 - (0 + -1) / 2) ; row 1: -(0 - 1) / (2 - (0 + -1) / 2)
    assert torch.allclose(dlr_targeted_loss(z, y, t), torch.tensor([-2 / 3.5, 1 / 2.5]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_boundary_step_is_the_minimal_projection(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    p = 0.3 + 0.4 * torch.rand(5, 1, 4, 4, generator=g)
    w = torch.randn(5, 1, 4, 4, generator=g)
    r = 0.05 * torch.randn(5, generator=g)
    d = boundary_step(p, w, r, norm)
    assert torch.allclose((w * d).flatten(1).sum(1), r, atol=1e-5)
    wf = w.flatten(1)
    if norm == "linf":  # interior solution: |r| / ||w||_1 in every coordinate
        expected = (r / wf.abs().sum(1))[:, None] * wf.sign()
    else:
        expected = (r / (wf * wf).sum(1))[:, None] * wf
    assert torch.allclose(d.flatten(1), expected, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_minimal_distance_on_a_linear_model(norm: str) -> None:
    model = linear(k=2)
    x = interior()
    w = (model[1].weight[1] - model[1].weight[0]).detach()
    with torch.no_grad():  # move the boundary through the data, halfway between the two middle inputs: through
        # one of them (the median) its logits tie or not by one rounding, which differs between CPU kernels
        model[1].bias.zero_()
        middle = (x.flatten(1) @ w).sort().values[len(x) // 2 - 1 : len(x) // 2 + 1]
        model[1].bias[1] = -middle.mean()
        z = model(x)
    y = z.argmax(1)
    assert bool(((z[:, 1] - z[:, 0]).abs() > 1e-4).all())  # no input on the boundary
    dual = w.abs().sum() if norm == "linf" else w.norm()
    dist = (z[:, 0] - z[:, 1]).abs() / dual  # analytic distance to the boundary (box not binding)
    inside = dist < 0.2
    assert bool(inside.any())
    above = FABT(eps=0.2, norm=norm, steps=20)(model, x, y)
    assert bool((_robust(model, above, y) == ~inside).all())
    found = lp_norm(above - x, norm)[inside]
    # never below the minimal distance; within the overshoot eta = 1.05 above it
    assert bool((found >= dist[inside] * (1 - 1e-4) - 1e-6).all())
    assert bool((found <= dist[inside] * 1.06 + 1e-6).all())
    clear = dist > 1e-3  # the median point sits on the boundary
    below = FABT(eps=0.97 * float(dist[clear].min()), norm=norm, steps=20)(model, x, y)
    assert bool(_robust(model, below, y)[clear].all())  # nothing can cross below the minimal distance


class _NoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        raise AssertionError("a black-box attack asked for a gradient")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_is_black_box_and_breaks_a_linear_model(norm: str) -> None:
    model = linear(k=2)
    blackbox = nn.Sequential(_Apply(_NoGrad.apply), model)
    x = interior(16)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = (model[1].weight[1] - model[1].weight[0]).detach()
    eps = 0.15 if norm == "linf" else 0.5
    dual = w.abs().sum() if norm == "linf" else w.norm()
    breakable = (z[:, 0] - z[:, 1]).abs() / dual < 0.6 * eps
    x_adv = Square(eps=eps, norm=norm, n_queries=300)(blackbox, x, y)
    assert bool((~_robust(model, x_adv, y))[breakable].all())


class _Apply(nn.Module):
    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_loss_and_success_hooks_are_used() -> None:
    model, x, y = _trained_mlp()
    towards_zero = lambda logits, y, x: logits[:, 0] - logits.logsumexp(1)  # noqa: E731
    never = lambda logits, y, x: torch.zeros(len(y), dtype=torch.bool)  # noqa: E731
    for atk in (
        PGD(eps=0.3, steps=20, loss=towards_zero, success=never),
        APGD(eps=0.3, steps=20, loss=towards_zero, success=never),
    ):
        with torch.no_grad():
            share = (model(atk(model, x, y)).argmax(1) == 0).float().mean().item()
        assert share > 0.8  # the model alone predicts class 0 for a quarter of the points
    always = lambda logits, y, x: torch.ones(len(y), dtype=torch.bool)  # noqa: E731
    x_pgd = PGD(eps=0.3, steps=20, random_start=False, success=always)(model, x, y)
    assert torch.equal(x_pgd, x)  # the start point already counts as a success


class _Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.c * z


def test_dlr_attacks_ignore_logit_scaling_where_cross_entropy_saturates() -> None:
    # Multiplying the logits by a large constant saturates the softmax: the cross-entropy gradient
    # vanishes and APGD-CE stalls, while the DLR loss (and APGD-DLR / APGD-T) are unchanged.
    model, x, y = _trained_mlp()
    scaled = nn.Sequential(model, _Scale(1e4)).eval()
    for name in ("apgd-dlr", "apgd-t"):
        atk = create(name, eps=0.1, steps=20, **({"n_target_classes": 3} if name == "apgd-t" else {}))
        plain = _robust(model, atk(model, x, y), y)
        assert int(_robust(scaled, atk(scaled, x, y), y).sum()) <= int(plain.sum()) + 1
    ce = create("apgd-ce", eps=0.1, steps=20)
    dlr = create("apgd-dlr", eps=0.1, steps=20)
    assert int(_robust(scaled, ce(scaled, x, y), y).sum()) > int(_robust(scaled, dlr(scaled, x, y), y).sum())


def test_square_window_share_halves_at_the_papers_milestones() -> None:
    # Andriushchenko et al. 2020: p_init until iteration 10 (of 10,000), then halved at 50, 200, 500,
    # 1000, 2000, 4000, 6000 and 8000; other budgets rescale the iteration to 10,000.
    its = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000, 6001, 8000, 8001, 9999]
    divs = [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    assert [p_selection(0.8, it, 10_000) for it in its] == [0.8 / d for d in divs]
    assert p_selection(0.8, 100, 1000) == 0.8 / 16  # 100 of 1000 is iteration 1000 of 10,000


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_uniform_in_the_ball(norm: str) -> None:
    # Uniform in the d-dimensional L2 ball: P(||delta|| <= r eps) = r^d; uniform in the L-inf cube:
    # every coordinate uniform on [-eps, eps]. Centred at 0.5 with eps = 0.2 so the box never clips.
    x = torch.full((4000, 1, 2, 2), 0.5)
    delta = random_start(x, 0.2, norm, generator(0, "start")) - x
    if norm == "linf":
        flat = delta.flatten()
        assert float(flat.abs().max()) <= 0.2 + 1e-7
        assert abs(float((flat.abs() <= 0.1).float().mean()) - 0.5) < 0.02
    else:
        r = lp_norm(delta, "l2") / 0.2
        assert float(r.max()) <= 1 + 1e-6
        for q in (0.5, 0.8, 0.95):  # d = 4
            assert abs(float((r <= q).float().mean()) - q**4) < 0.025
        direction = delta.flatten(1) / lp_norm(delta, "l2")[:, None]
        assert float(direction.mean(dim=0).abs().max()) < 0.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_onto_the_ball_then_the_box(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 3, 3, generator=g)
    far = x + torch.randn(64, 1, 3, 3, generator=g)
    out = project(far, x, 0.3, norm)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(lp_norm(out - x, norm).max()) <= 0.3 + 1e-6
    near = x + 0.01 * torch.randn(64, 1, 3, 3, generator=g)
    inside = (near >= 0).flatten(1).all(1) & (near <= 1).flatten(1).all(1)
    assert torch.equal(project(near, x, 0.3, norm)[inside], near[inside])  # a point inside both stays
    if norm == "l2":  # with the box not binding the L2 projection is the radial rescaling
        mid = torch.full((2, 1, 3, 3), 0.5)
        step = torch.tensor([0.3, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0]).view(1, 1, 3, 3) * torch.tensor(
            [1.0, 0.2]
        ).view(2, 1, 1, 1)
        out = project(mid + step, mid, 0.25, "l2")
        assert torch.allclose(out[0] - mid[0], step[0] * 0.25 / 0.5)
        assert torch.allclose(out[1], mid[1] + step[1])


@pytest.mark.parametrize(("norm", "eps", "tol"), [("l2", 0.3, 2e-3), ("linf", 0.1, 6e-3)])
def test_apgd_step_size_schedule_settles_on_an_interior_maximum(norm: str, eps: float, tol: float) -> None:
    # Maximise -||x_adv - c||_2 with c inside the ball: every normalised step overshoots c, so the loss
    # oscillates; only the checkpoint rule (halve the step from 2 eps when at most rho of the steps
    # raised the loss, restart from the best point) lets APGD settle on c. With a fixed step of 2 eps
    # (or no checkpoints) the best point stays 0.015-0.14 away.
    model = linear(k=3)
    x = torch.full((4, 1, 4, 4), 0.5)
    c = x + 0.025 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    closer = lambda logits, y, xa: -lp_norm(xa - c, "l2")  # noqa: E731
    never = lambda logits, y, xa: torch.zeros(len(y), dtype=torch.bool)  # noqa: E731
    out = APGD(eps=eps, norm=norm, steps=100, loss=closer, success=never)(model, x, torch.zeros(4, dtype=torch.long))
    assert bool((lp_norm(c - x, norm) < eps).all())
    assert float(lp_norm(out - c, "l2").max()) < tol
