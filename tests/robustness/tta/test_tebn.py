"""TeBN against statistics recomputed by hand and against PyTorch's own training-mode batch norm."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.robustness.tta import Stream, TeBN, batch_statistics


def _by_hand(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    conv, bn2, _, _, _, lin, bn1, _, head = net
    h = conv(x)
    mu = h.mean(dim=(0, 2, 3))
    var = ((h - mu[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased, as batch norm uses
    h = (h - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn2.eps)
    h = F.relu(h * bn2.weight[None, :, None, None] + bn2.bias[None, :, None, None])
    h = lin(h.flatten(1))
    mu, var = h.mean(dim=0), h.var(dim=0, unbiased=False)
    h = F.relu((h - mu) / torch.sqrt(var + bn1.eps) * bn1.weight + bn1.bias)
    return head(h)


def test_tebn_equals_statistics_recomputed_by_hand(net: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = _by_hand(net, x)
        eval_logits = net(x)
    got = TeBN().adapt(net, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, eval_logits, atol=1e-3)  # the running statistics would differ


def test_tebn_equals_training_mode_batch_norm(net: nn.Module, x: torch.Tensor) -> None:
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()  # batch statistics; dropout stays in eval mode
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(TeBN().adapt(net, x), expected, atol=1e-5, rtol=1e-5)


def test_batch_statistics_per_group() -> None:
    x = torch.randn(2, 5, 3, 4, 4)  # two groups of five
    mean, var = batch_statistics(x)
    for g in range(2):
        torch.testing.assert_close(mean[g], x[g].mean(dim=(0, 2, 3)))
        torch.testing.assert_close(var[g], x[g].var(dim=(0, 2, 3), unbiased=False))


def test_tebn_stream_is_memoryless(net: nn.Module, x: torch.Tensor) -> None:
    stream = Stream(TeBN(), net)
    stream(x[:6])
    torch.testing.assert_close(stream(x[6:]), TeBN().adapt(net, x[6:]))
