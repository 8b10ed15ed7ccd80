"""Hard and soft pseudo-labelling against one hand-run SGD step on a copy of the model."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.robustness.tta import HardPseudoLabel, SoftPseudoLabel, Tent


def _hand_step(net: nn.Module, x: torch.Tensor, targets: str, lr: float, temperature: float = 0.5) -> torch.Tensor:
    ref = copy.deepcopy(net)
    for p in ref.parameters():
        p.requires_grad_(False)
    weights, grads = [], []
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            weights += [m.weight, m.bias]
    for p in weights:
        p.requires_grad_(True)
    logits = ref(x)
    if targets == "hard":
        loss = F.cross_entropy(logits, logits.argmax(1).detach())
    else:
        soft = (logits.detach() / temperature).softmax(1)
        loss = -(soft * logits.log_softmax(1)).sum(1).mean()
    grads = torch.autograd.grad(loss, weights)
    with torch.no_grad():
        for p, g in zip(weights, grads, strict=True):
            p -= lr * g  # plain SGD, written out
        return ref(x)


def test_hard_pseudo_label_step_by_hand(net: nn.Module, x: torch.Tensor) -> None:
    got = HardPseudoLabel(optimizer="sgd", momentum=0.0, lr=0.5).adapt(net, x)
    torch.testing.assert_close(got, _hand_step(net, x, "hard", 0.5), atol=1e-5, rtol=1e-4)
    # a different loss than TENT's: the same step on the entropy lands elsewhere
    assert not torch.allclose(got, Tent(optimizer="sgd", momentum=0.0, lr=0.5).adapt(net, x), atol=1e-4)


def test_soft_pseudo_label_step_by_hand(net: nn.Module, x: torch.Tensor) -> None:
    got = SoftPseudoLabel(optimizer="sgd", momentum=0.0, lr=0.5, temperature=0.3).adapt(net, x)
    torch.testing.assert_close(got, _hand_step(net, x, "soft", 0.5, 0.3), atol=1e-5, rtol=1e-4)


def test_soft_tends_to_hard_as_the_temperature_falls(net: nn.Module, x: torch.Tensor) -> None:
    hard = HardPseudoLabel(optimizer="sgd", momentum=0.0, lr=0.5).adapt(net, x)
    soft = SoftPseudoLabel(optimizer="sgd", momentum=0.0, lr=0.5, temperature=1e-4).adapt(net, x)
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=1e-4)
