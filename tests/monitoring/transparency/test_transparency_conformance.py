"""Conformance over every registered attribution method: shape, dtype, determinism, chores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, UnknownNameError, generator
from mlsafety.monitoring import transparency as tr

NAMES = tr.available()


def test_every_method_is_registered_and_all_is_sorted() -> None:
    assert {
        "saliency",
        "input-x-gradient",
        "smoothgrad",
        "smoothgrad-sq",
        "vargrad",
        "integrated-gradients",
        "occlusion",
    } <= set(NAMES)
    with pytest.raises(UnknownNameError):
        tr.create("salency")


@pytest.mark.parametrize("name", NAMES)
def test_maps_keep_shape_dtype_and_are_deterministic(name: str, tiny_net: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8, generator=generator(0, "x"))
    method = tr.create(name)
    a = method.attribute(tiny_net, x, 1)
    b = method.attribute(tiny_net, x, torch.full((5,), 1))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_model_and_inputs_are_left_unchanged(name: str, tiny_net: nn.Module) -> None:
    tiny_net.train()
    tiny_net.conv.weight.requires_grad_(False)
    flags = [p.requires_grad for p in tiny_net.parameters()]
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    x = torch.rand(3, 1, 8, 8, generator=generator(0, "x"))
    x0 = x.clone()
    tr.create(name).attribute(tiny_net, x, torch.tensor([0, 1, 2]))
    assert tiny_net.training and [p.requires_grad for p in tiny_net.parameters()] == flags
    assert all(torch.equal(v, tiny_net.state_dict()[k]) for k, v in state.items())
    assert torch.equal(x, x0)
    assert not tiny_net._forward_hooks and not tiny_net._forward_pre_hooks and not tiny_net._backward_hooks
    assert not any(p.grad is not None for p in tiny_net.parameters())


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", NAMES)
def test_model_is_restored_after_an_exception(name: str) -> None:
    model = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        tr.create(name).attribute(model, torch.rand(2, 1, 8, 8), 0)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bad_targets_and_parameters_raise_input_error(name: str, tiny_net: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError):
        tr.create(name).attribute(tiny_net, x, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError):
        tr.create(name).attribute(tiny_net, x, 0, no_such_param=1)
    with pytest.raises(InputError):
        tr.create(name, no_such_param=1)


def test_per_call_parameters_override_the_constructor(tiny_net: nn.Module) -> None:
    x = torch.rand(2, 1, 8, 8, generator=generator(0, "x"))
    signed = tr.create("saliency").attribute(tiny_net, x, 0, abs=False)
    assert (signed < 0).any()
    assert torch.equal(signed, tr.create("saliency", abs=False).attribute(tiny_net, x, 0))
