"""Tiny seeded batch-norm models, data and model snapshots for the test-time adaptation tests."""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import generator

K = 5


def conv_bn(seed: int = 0) -> nn.Module:
    """Conv -> BatchNorm2d -> ReLU -> dropout -> Linear -> BatchNorm1d -> ReLU -> Linear on 1x4x4 inputs,
    with non-trivial running statistics (so test-time statistics differ from the model's own)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(64, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, K),
    )
    g = generator(seed, "tta-test", "bn")
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return net.eval()


def head_bn(seed: int = 0, k: int = 3) -> nn.Module:
    """Flatten -> Linear -> BatchNorm1d -> ReLU -> Linear: the batch statistics sit right before the
    head, where malicious inputs move every benign logit (planted structure for the attack tests)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, k)).eval()


def images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=generator(seed, "tta-test", "x"))


def snapshot(net: nn.Module) -> dict[str, object]:
    """Everything a TTA call must leave as it found it."""
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "modes": [m.training for m in net.modules()],
        "flags": [p.requires_grad for p in net.parameters()],
        "forwards": [("forward" in vars(m)) for m in net.modules()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()],
    }


def same_snapshot(a: dict[str, object], b: dict[str, object]) -> bool:
    sa, sb = a["state"], b["state"]
    assert isinstance(sa, dict) and isinstance(sb, dict)
    return (
        sa.keys() == sb.keys()
        and all(torch.equal(sa[k], sb[k]) for k in sa)
        and all(a[key] == b[key] for key in ("modes", "flags", "forwards", "hooks"))
    )
