"""Conformance over every registered test-time adaptation method: the contract of TTAMethod."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import UnknownNameError
from mlsafety.robustness import tta
from mlsafety.robustness.tta import DIA, TTA_METHODS, Stream, create
from tests.robustness.tta._support import K, same_snapshot, snapshot
from tests.support.family import check_family, one_line_input_error

NAMES = tta.available()

test_tta_family = check_family(TTA_METHODS)


def test_registry_lists_the_issue_methods() -> None:
    assert set(NAMES) >= {"tebn", "tent", "hard-pl", "soft-pl", "alpha-bn", "medbn"}
    assert {n for n in NAMES if "defence" in TTA_METHODS.tags(n)} == {"alpha-bn", "medbn"}
    with pytest.raises(UnknownNameError):
        create("tnet")


def _mixed(net: nn.Module) -> nn.Module:
    """Some flags flipped, so that 'restored' cannot mean 'set to the default'."""
    net[4].train()  # the dropout layer in training mode
    net[0].bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("name", NAMES)
def test_adapt_shape_and_model_unchanged(name: str, net: nn.Module, x: torch.Tensor) -> None:
    _mixed(net)
    before, x_copy = snapshot(net), x.clone()
    logits = create(name).adapt(net, x)
    assert logits.shape == (x.shape[0], K) and logits.dtype == x.dtype and not logits.requires_grad
    assert torch.isfinite(logits).all()
    assert same_snapshot(before, snapshot(net)) and torch.equal(x, x_copy)
    assert torch.equal(logits, create(name).adapt(net, x))  # deterministic


@pytest.mark.parametrize("name", NAMES)
def test_stream_and_attack_leave_the_model_unchanged(name: str, net: nn.Module, x: torch.Tensor) -> None:
    _mixed(net)
    before = snapshot(net)
    stream = Stream(create(name), net)
    out = stream.run([x[:6], x[6:]])
    assert out.shape == (x.shape[0], K) and stream.batches_ == 2
    assert (len(stream.state_.params) > 0) == TTA_METHODS.get(name).updates_params  # type: ignore[union-attr]
    DIA(steps=2).run(net, create(name), x[:8], x[8:], groups=2)
    assert same_snapshot(before, snapshot(net))


@pytest.mark.parametrize("name", NAMES)
def test_model_restored_after_an_exception(name: str, net: nn.Module, x: torch.Tensor) -> None:
    _mixed(net)
    before = snapshot(net)
    wrong = torch.rand(4, 2, 4, 4)  # two channels: the first convolution raises inside the adaptation
    with pytest.raises(RuntimeError):
        create(name).adapt(net, wrong)
    with pytest.raises(RuntimeError):
        Stream(create(name), net)(wrong)
    with pytest.raises(RuntimeError):
        DIA(steps=1).run(net, create(name), wrong[:3], wrong[3:])
    assert same_snapshot(before, snapshot(net))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line(name: str, net: nn.Module, x: torch.Tensor) -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    one_line_input_error(lambda: create(name).adapt(plain, x), "no batch-norm layers")
    one_line_input_error(lambda: create(name).adapt(net, x[:1]), "at least 2")
    one_line_input_error(lambda: Stream(create(name), net)(x[:1]), "at least 2")
    one_line_input_error(lambda: create(name).adapt(net, x * 2), "[0, 1]")


@pytest.mark.parametrize("name", ["tent", "soft-pl"])
def test_adaptation_works_under_inference_mode(name: str, net: nn.Module, x: torch.Tensor) -> None:
    """Adaptation differentiates: callers inside torch.inference_mode() (inputs made there too) get
    the same logits as outside it, from adapt, a stream and the attack."""
    method = create(name)
    expected = method.adapt(net, x)
    streamed = Stream(method, net)(x)
    attacked = DIA(steps=1).run(net, method, x[:8], x[8:10], groups=2)
    with torch.inference_mode():
        xi = x.clone()
        torch.testing.assert_close(method.adapt(net, xi), expected)
        torch.testing.assert_close(Stream(method, net)(xi), streamed)
        got = DIA(steps=1).run(net, method, xi[:8], xi[8:10], groups=2)
    torch.testing.assert_close(got.logits, attacked.logits)
    torch.testing.assert_close(got.x_malicious, attacked.x_malicious)
