"""A caller's generator may live on a GPU: every draw the attacks, TTA batches and draw_seed make with it is made
on its device (a CPU draw with a CUDA generator raises). The CPU cases run everywhere and pin that a CPU generator
draws what it always drew."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mlsafety.core import draw_seed
from mlsafety.robustness.attacks import Attack, create
from mlsafety.robustness.tta.evaluate import draw_batches
from tests.support.devices import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_draw_seed_and_targets_take_a_generator_on_any_device(device: str) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    assert 0 <= draw_seed(g) < 2**62
    y = torch.tensor([0, 1, 2, 3])
    t = Attack._targets(y, 4, torch.Generator(device=device).manual_seed(1))
    assert t.device == y.device and bool((t != y).all()) and bool(((t >= 0) & (t < 4)).all())
    if device == "cpu":  # the CPU's draws are those made before the device= argument
        assert draw_seed(torch.Generator().manual_seed(0)) == int(
            torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0))
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "extra"), [("square", {"n_queries": 10}), ("pgd", {"steps": 2, "targeted": True})])
def test_attacks_run_with_a_generator_on_any_device(
    device: str, name: str, extra: dict[str, Any], net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    g = torch.Generator(device=device).manual_seed(0)
    res = create(name, eps=0.1, **extra).run(net, x, y, generator=g)
    assert res.x_adv.shape == x.shape and float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_tta_attack_batches_take_a_generator_on_any_device(device: str) -> None:
    x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 3
    got = draw_batches(x, y, batch_size=8, n_malicious=2, n_batches=3, generator=torch.Generator(device).manual_seed(0))
    assert got.index.shape == (3, 8) and got.index.device.type == "cpu"
