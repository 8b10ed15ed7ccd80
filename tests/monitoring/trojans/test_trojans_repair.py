"""Repair: the model passed in is never changed; each method removes the tiny model's trojan or says what it did."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trojans_support import TARGET, Tiny

from mlsafety.core import ArrayDataset, InputError
from mlsafety.monitoring.trojans import fine_pruning, nc_pruning, nc_unlearning, trojan_metrics
from mlsafety.monitoring.trojans.repair import channel_activation, last_conv


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(snap[k], v) for k, v in model.state_dict().items()) and set(snap) == set(model.state_dict())


def test_channel_activation_hand_computed() -> None:
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(2 * 4, 3))
    x = torch.tensor([0.0, 0.5, 1.0, 1.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    act = channel_activation(model, conv, x)
    torch.testing.assert_close(act, torch.tensor([0.625, 0.0]))  # channel 2 is negative, clamped by ReLU
    assert last_conv(model) == "0"


def test_unlearning_with_the_true_trigger_removes_the_trojan(
    tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]
) -> None:
    snap = _snapshot(tiny_trojaned.model)
    before = trojan_metrics(tiny_trojaned.model, tiny_trojaned.attack, digits["test"], TARGET)
    rep = nc_unlearning(tiny_trojaned.model, digits["val"], tiny_trojaned.attack.apply_trigger, epochs=5, lr=5e-3)
    after = trojan_metrics(rep.model, tiny_trojaned.attack, digits["test"], TARGET)
    assert _same(tiny_trojaned.model, snap), "the model passed in must not change"
    assert before["attack_success_rate"].value > 0.9
    assert after["attack_success_rate"].value < 0.2
    assert rep.method == "nc-unlearning" and not rep.model.training


def test_fine_pruning_keeps_pruned_channels_at_zero(tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    snap = _snapshot(tiny_trojaned.model)
    rep = fine_pruning(tiny_trojaned.model, digits["val"], max_drop=0.5, epochs=2)
    assert _same(tiny_trojaned.model, snap)
    assert rep.pruned, "a 50-point budget allows pruning"
    conv = dict(rep.model.named_modules())[rep.layer]  # type: ignore[index]
    assert float(conv.weight.detach()[rep.pruned].abs().sum()) == 0.0
    assert float(conv.bias.detach()[rep.pruned].abs().sum()) == 0.0
    assert set(dict(rep.model.named_parameters())) == set(dict(tiny_trojaned.model.named_parameters()))


def test_nc_pruning_prunes_the_neurons_the_trigger_excites(
    tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]
) -> None:
    from mlsafety.core import forward

    model = tiny_trojaned.model
    snap = _snapshot(model)
    rep = nc_pruning(model, digits["val"], tiny_trojaned.attack.apply_trigger, TARGET, max_drop=0.2)
    assert _same(model, snap)
    assert rep.pruned and rep.layer == "fc"
    others = digits["val"].x[digits["val"].y != TARGET]
    f_trig = forward(model, tiny_trojaned.attack.apply_trigger(others)).features
    f_clean = forward(model, digits["val"].x).features
    assert f_trig is not None and f_clean is not None
    assert int((f_trig.mean(0) - f_clean.mean(0)).argmax()) in rep.pruned, "the most trigger-excited neuron goes first"
    assert float(rep.model.fc.weight.detach()[:, rep.pruned].abs().sum()) == 0.0
    before = trojan_metrics(model, tiny_trojaned.attack, digits["test"], TARGET)["attack_success_rate"]
    after = trojan_metrics(rep.model, tiny_trojaned.attack, digits["test"], TARGET)["attack_success_rate"]
    assert after.value < before.value


def test_unlearning_rounds_need_a_target(tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    import pytest

    from mlsafety.core import InputError

    with pytest.raises(InputError, match="target"):
        nc_unlearning(tiny_trojaned.model, digits["val"], tiny_trojaned.attack.apply_trigger, rounds=2)
    with pytest.raises(InputError, match="rate"):
        nc_unlearning(tiny_trojaned.model, digits["val"], tiny_trojaned.attack.apply_trigger, rate=1.0)


def test_channel_activation_reads_the_channels_after_batch_norm() -> None:
    """conv -> BatchNorm -> ReLU: channel 0 is busy before batch norm but its negative scale makes it dormant
    after it, channel 1 the reverse; fine-pruning's ranking must see the block's output, not the conv's."""
    conv = nn.Conv2d(1, 2, 1)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        conv.bias.zero_()
        bn.weight.copy_(torch.tensor([-1.0, -1.0]))
        bn.bias.zero_()
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4, 3)).eval()  # running stats 0, 1
    x = torch.tensor([0.0, 0.5, 1.0, 1.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    act = channel_activation(model, conv, x)
    scale = 1 / (1 + bn.eps) ** 0.5
    torch.testing.assert_close(act, torch.tensor([0.0, 0.625 * scale]))  # the conv's own output: [0.625, 0]


def test_channel_activation_skips_a_relu_shared_by_every_block() -> None:
    """One ReLU module applied after both convolutions: it also sees the first block's maps, so the last
    convolution's channels are read at the convolution (clamped at 0) and not at the shared ReLU."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 3, 1)
            self.conv2 = nn.Conv2d(3, 2, 1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).flatten(1))

    model = Shared().eval()
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.conv2(model.relu(model.conv1(x))).clamp_min(0).mean(dim=(0, 2, 3))
    torch.testing.assert_close(channel_activation(model, model.conv2, x), want)


def test_fine_pruning_silences_pruned_channels_after_batch_norm() -> None:
    """conv -> BatchNorm -> ReLU: a pruned channel must give 0 at the block's output, as a removed neuron does.
    Zeroing only the convolution's filter leaves batch norm's shift: here ``(0 - 1) * (-1) + 0.2 = 1.2`` on every
    input in eval mode, and a trainable ``beta`` in training mode."""
    from mlsafety.core import generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv, bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
        bn.weight.fill_(-1.0)
        bn.bias.fill_(0.2)
    x = torch.rand(64, 1, 6, 6, generator=generator(0, "fp-bn"))
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # the model's own answers: every drop in accuracy is the pruning's
    rep = fine_pruning(model, ArrayDataset(x, y), max_drop=1.0, epochs=1)
    assert len(rep.pruned) == 3  # a budget of 100 points prunes all but one channel
    block = nn.Sequential(*list(rep.model.children())[:3]).eval()
    with torch.no_grad():
        out = block(x)[:, rep.pruned]
    assert float(out.abs().max()) == 0.0


def test_a_convolution_the_forward_pass_never_runs_is_refused() -> None:
    class Spare(nn.Module):  # holds a convolution its forward never calls (a StopIteration before)
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4, 3))
            self.spare = nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = Spare().eval()
    with pytest.raises(InputError, match="is not run by the model's forward pass"):
        channel_activation(model, model.spare, torch.rand(2, 1, 2, 2))
