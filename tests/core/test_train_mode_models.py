"""Issue 22: a model left in train mode (BatchNorm, Dropout) is measured in eval mode and given back as it came."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, forward, frozen, generator
from mlsafety.monitoring import ood
from mlsafety.robustness.attacks import create as create_attack


class BNDropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.9)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).flatten(1)))


@pytest.fixture
def pair() -> tuple[nn.Module, nn.Module]:
    """The same weights twice: one left in train mode (running statistics not yet at their defaults), one in eval."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = BNDropNet()
    net.bn.running_mean.uniform_(-0.2, 0.2)
    net.bn.running_var.uniform_(0.5, 1.5)
    return net.train(), copy.deepcopy(net).eval()


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _x(n: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=generator(0, "train-mode"))


def _assert_untouched(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(m.training for m in net.modules()), "train mode was not restored"
    after = net.state_dict()
    for k, v in before.items():  # BatchNorm running statistics (and its batch counter) unchanged
        assert torch.equal(after[k], v), k


def test_forward_and_features_run_in_eval_mode_and_restore_train_mode(pair):
    net, ref = pair
    before = _state(net)
    x = _x()
    expect = ref(x)
    out1, out2 = forward(net, x), forward(net, x)
    torch.testing.assert_close(out1.logits, expect)  # no dropout, running statistics used
    torch.testing.assert_close(out2.logits, expect)
    feats, logits = Classifier(net).features_and_logits(x)
    torch.testing.assert_close(logits, expect)
    torch.testing.assert_close(feats, torch.relu(ref.bn(ref.conv(x))).flatten(1))
    _assert_untouched(net, before)


def test_attack_and_detector_run_in_eval_mode_and_restore_train_mode(pair):
    net, ref = pair
    before = _state(net)
    x, y = _x(6), torch.tensor([0, 1, 2, 0, 1, 2])
    pgd = create_attack("pgd", eps=0.1, steps=3)
    adv = pgd.run(net, x, y, generator=generator(0, "pgd")).x_adv
    torch.testing.assert_close(adv, pgd.run(ref, x, y, generator=generator(0, "pgd")).x_adv)
    scores = ood.create("knn", k=2).fit(net, (x, y)).score(net, x)
    torch.testing.assert_close(scores, ood.create("knn", k=2).fit(ref, (x, y)).score(ref, x))
    _assert_untouched(net, before)


def test_modes_and_flags_restored_after_an_exception(pair):
    net, _ = pair
    net.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        forward(net, torch.rand(2, 1, 9, 9))  # wrong size: the Linear layer raises mid-pass
    with pytest.raises(RuntimeError, match="inside"):
        with frozen(net):
            assert not any(m.training for m in net.modules())
            raise RuntimeError("inside")
    assert all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
