"""TENT against one (and two) hand-run optimiser steps of the entropy on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlsafety.robustness.tta import Stream, TeBN, Tent, entropy


def _reference(net: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    """A copy whose batch-norm layers use batch statistics, and their affine parameters."""
    ref = copy.deepcopy(net)
    params = []
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            params += [m.weight, m.bias]
    for p in ref.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return ref, params


def _optimiser(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9) if name == "sgd" else torch.optim.Adam(params, lr=lr)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.5), ("adam", 0.05)])
def test_one_step_equals_the_hand_computed_step(optimizer: str, lr: float, net: nn.Module, x: torch.Tensor) -> None:
    ref, params = _reference(net)
    opt = _optimiser(optimizer, params, lr)
    loss = -(ref(x).softmax(1) * ref(x).log_softmax(1)).sum(1).mean()  # entropy written out
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        expected = ref(x)
    got = Tent(optimizer=optimizer, lr=lr).adapt(net, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, TeBN().adapt(net, x), atol=1e-3)  # the step did move the parameters


def test_stream_carries_parameters_and_moments(net: nn.Module, x: torch.Tensor) -> None:
    ref, params = _reference(net)
    opt = _optimiser("adam", params, 0.05)
    batches = [x[:6], x[6:]]
    expected = []
    for xb in batches:
        loss = entropy(ref(xb)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            expected.append(ref(xb))
    stream = Stream(Tent(lr=0.05), net)
    for xb, want in zip(batches, expected, strict=True):
        torch.testing.assert_close(stream(xb), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stream.state_.params["1.weight"][0], params[0].detach())  # type: ignore[union-attr]
    stream.reset()
    torch.testing.assert_close(stream(batches[1]), Tent(lr=0.05).adapt(net, batches[1]))


def test_prediction_before_the_update_is_tebn(net: nn.Module, x: torch.Tensor) -> None:
    got = Tent(lr=0.5, predict_after_update=False).adapt(net, x)
    torch.testing.assert_close(got, TeBN().adapt(net, x))


def test_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    torch.testing.assert_close(entropy(logits), torch.tensor([0.6931472, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_several_steps_per_batch_in_a_stream_equal_torch_optimisers(
    optimizer: str, net: nn.Module, x: torch.Tensor
) -> None:
    """Two steps on each of two batches: SGD's momentum buffer (and Adam's moments and step count)
    carried across steps and batches as torch.optim does; each batch predicted after its last step."""
    lr = 0.3 if optimizer == "sgd" else 0.05
    ref, params = _reference(net)
    opt = _optimiser(optimizer, params, lr)
    batches = [x[:6], x[6:]]
    expected = []
    for xb in batches:
        for _ in range(2):
            loss = entropy(ref(xb)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            expected.append(ref(xb))
    stream = Stream(Tent(optimizer=optimizer, lr=lr, steps=2), net)
    for xb, want in zip(batches, expected, strict=True):
        torch.testing.assert_close(stream(xb), want, atol=1e-5, rtol=1e-4)
    assert stream.state_ is not None and stream.state_.steps == 4
