"""Conformance over every registered attack: the contract of mlsafety.robustness.attacks.Attack."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, UnknownNameError
from mlsafety.robustness import attacks
from mlsafety.robustness.attacks import ATTACKS, Attack, create, lp_norm
from tests.support.family import check_family

# Cheap settings so the whole registry runs in seconds; an attack missing here runs with defaults.
FAST: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 3},
    "apgd-ce": {"steps": 5},
    "apgd-dlr": {"steps": 5},
    "apgd-t": {"steps": 4, "n_target_classes": 2},
    "fab-t": {"steps": 4, "n_target_classes": 2},
    "square": {"n_queries": 20},
    "autoattack": {"steps": 4, "n_target_classes": 2, "n_queries": 20},
    "autoattack-fast": {"steps": 4, "n_target_classes": 2},
}
NAMES = attacks.available()
CASES = [(name, norm) for name in NAMES for norm in ATTACKS.get(name).norms]


def make(name: str, norm: str, eps: float = 0.1, **kw: Any) -> Attack:
    return create(name, eps=eps, norm=norm, **{**FAST.get(name, {}), **kw})


def test_registry_lists_the_issue_attacks() -> None:
    expected = {"fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack", "autoattack-fast"}
    assert expected <= set(NAMES)
    with pytest.raises(UnknownNameError):
        create("pgdd", eps=0.1)


# The family contract (names, docstrings, declared parameters, rebuild, repr, unknown parameters,
# out-of-bounds values, tags) over every registered attack.
test_attack_family = check_family(
    ATTACKS,
    make_params=lambda name: {"eps": 0.1, **FAST.get(name, {})},
    known_tags=("white-box", "black-box", "ensemble", "minimum-norm"),
)


def test_signatures_keep_their_order() -> None:
    """Positional calls stay valid: eps and norm first, each attack's own, then seed and batch_size."""
    assert ATTACKS.parameters("pgd") == [
        "eps", "norm", "steps", "step_size", "random_start", "restarts", "targeted", "loss", "success",
        "early_stop", "seed", "batch_size",
    ]  # fmt: skip
    assert ATTACKS.parameters("apgd-t") == [
        "eps", "norm", "steps", "n_target_classes", "restarts", "rho", "early_stop", "seed", "batch_size",
    ]  # fmt: skip
    for name in NAMES:
        params = ATTACKS.parameters(name) or []
        assert params[:2] == ["eps", "norm"] and params[-2:] == ["seed", "batch_size"], name
    assert create("pgd", eps=0.1).get_params() == type(create("pgd", eps=0.1))(0.1, "linf").get_params()


def test_ensemble_members_get_the_ensemble_budget() -> None:
    aa = create("autoattack", eps=0.1, steps=7, n_target_classes=5, n_queries=30, seed=4, batch_size=8)
    common = {"eps": 0.1, "norm": "linf", "seed": 4, "batch_size": 8}
    assert aa.build("apgd-ce", 10).stored_params() == create("apgd-ce", steps=7, **common).stored_params()
    assert aa.build("apgd-t", 4).get_params()["n_target_classes"] == 3  # capped at K - 1
    assert aa.build("fab-t", 10).get_params()["n_target_classes"] == 5
    assert aa.build("square", 10).get_params()["n_queries"] == 30


def test_step_size_default_follows_eps_and_steps(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    auto = create("pgd", eps=0.1, steps=4, random_start=False, early_stop=False)
    explicit = create("pgd", eps=0.1, steps=4, step_size=2.5 * 0.1 / 4, random_start=False, early_stop=False)
    assert auto.step_size is None  # stored as given; resolved when attacking
    assert torch.equal(auto(net, x, y), explicit(net, x, y))


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_shape_dtype_device_ball_box(
    name: str, norm: str, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = make(name, norm, eps)(net, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(lp_norm(x_adv - x, norm).max()) <= eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_float64_inputs_keep_dtype(
    name: str, norm: str, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    x64 = x.double()
    x_adv = make(name, norm)(net, x64, y)
    assert x_adv.dtype == torch.float64
    assert float(lp_norm(x_adv - x64, norm).max()) <= 0.1 * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_float64_models_are_attacked(
    name: str, norm: str, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A float64 model gives float64 losses and distances: APGD's and FAB's per-point bests once were
    float32 buffers, and writing a float64 loss into them raised instead of attacking."""
    x, y = data
    net64 = net.double()
    x_adv = make(name, norm)(net64, x, y)
    assert x_adv.dtype == x.dtype
    assert float(lp_norm(x_adv - x, norm).max()) <= 0.1 * (1 + 1e-5) + 1e-6
    assert all(p.dtype == torch.float64 for p in net64.parameters())


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_seeded_determinism(name: str, norm: str, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    a = make(name, norm, seed=3)(net, x, y)
    b = make(name, norm, seed=3)(net, x, y)
    assert torch.equal(a, b)


def _state(net: nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor], int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    return [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()], sd, hooks


def _same(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    return (
        before[0] == after[0]
        and before[1] == after[1]
        and before[3] == after[3]
        and all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    )


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_model_and_inputs_restored(
    name: str, norm: str, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    net.train()  # a caller in the middle of training: the attack must give train mode back
    net[0].weight.requires_grad_(False)  # mixed flags must come back as they were
    before = _state(net)
    x_copy, y_copy = x.clone(), y.clone()
    make(name, norm)(net, x, y)
    assert _same(before, _state(net))
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


class Explodes(nn.Module):
    """Raises on the n-th forward call, to check the model is restored after an exception."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return self.inner(x)


@pytest.mark.parametrize("after", [0, 2])
@pytest.mark.parametrize("name", NAMES)
def test_restored_after_exception(
    name: str, after: int, net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    model = Explodes(net, after=after).train()
    before = _state(model)
    try:
        make(name, "linf")(model, x, y)
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        assert after > 0 and model.calls <= after  # only a one-pass attack may finish
    assert _same(before, _state(model))


@pytest.mark.parametrize("name", [n for n in NAMES if ATTACKS.get(n).supports_targeted])
def test_targeted_hits_target_more_than_chance(name: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()  # every class has a region in the box
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    target = (y + 1 + torch.arange(40) % 4) % 5
    budget = {"pgd": {"steps": 20}, "square": {"n_queries": 300}, "apgd-ce": {"steps": 20}, "apgd-dlr": {"steps": 20}}
    atk = create(name, eps=0.5, targeted=True, **budget.get(name, FAST.get(name, {})))
    x_adv = atk(net, x, y, target=target)
    with torch.no_grad():
        hit = (net(x_adv).argmax(1) == target).float().mean().item()
    assert hit > 1.5 / 5


def test_untargeted_attacks_refuse_targeted_mode() -> None:
    for name in NAMES:
        if not ATTACKS.get(name).supports_targeted:
            with pytest.raises(InputError):
                create(name, eps=0.1, targeted=True)


def test_input_checks(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    atk = create("fgsm", eps=0.1)
    with pytest.raises(InputError):
        atk(net, x * 2, y)  # outside [0, 1]
    with pytest.raises(InputError):
        atk(net, x, y[:-1])
    with pytest.raises(InputError):
        atk(net, x, y + 10)
    with pytest.raises(InputError, match="pgd eps must be <= 1 for norm 'linf'"):
        create("pgd", eps=1.5)
    assert create("pgd", eps=1.5, norm="l2").eps == 1.5  # L2 radii may exceed 1
    with pytest.raises(InputError):
        atk(net, x, y, target=y)  # target without targeted mode


def test_attack_method_is_call(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = data
    atk = create("pgd", eps=0.1, steps=2)
    assert torch.equal(atk.attack(net, x, y), atk(net, x, y))
