"""Conformance over the augmentation registry and the training recipe."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import ArrayDataset, generator
from mlsafety.robustness.augment import AUGMENTATIONS, available, create, train_augmented
from tests.support.family import check_family

NAMES = available()


def test_registry_has_the_recipes():  # __all__ order and names: tests/test_public_api.py
    assert {"mixup", "cutmix", "augmix", "pixmix", "standard"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_differentiable_deterministic_and_keeps_input(name, tiny_net, tiny_data):
    x, y = tiny_data.x[:12], tiny_data.y[:12]
    before = x.clone()
    tiny_net.train()
    aug = create(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = aug.loss(tiny_net, x, y, generator(0, name))
        torch.manual_seed(0)
        b = aug.loss(tiny_net, x, y, generator(0, name))
    assert a.ndim == 0 and torch.isfinite(a)
    assert torch.equal(a, b)
    a.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tiny_net.parameters())
    assert torch.equal(x, before)
    assert AUGMENTATIONS.get(name).name == name and type(aug).__name__ in repr(aug)


def test_training_recipe_is_deterministic_and_learns(tiny_net):
    g = generator(0, "blobs")
    y = torch.arange(60) % 3
    x = (0.2 + 0.6 * (y.float() / 2).view(-1, 1, 1, 1) + 0.05 * torch.randn(60, 1, 8, 8, generator=g)).clamp(0, 1)
    data = ArrayDataset(x, y, name="blobs")
    for name in ("mixup",):  # the loop is under test here; every loss is tested in the conformance test above
        nets = []
        for _ in range(2):
            net = type(tiny_net)()
            net.load_state_dict(tiny_net.state_dict())
            nets.append(train_augmented(net, data, name, epochs=3, batch_size=20, lr=1e-2, seed=1))
        assert not nets[0].training
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(p, q)
        acc = float((nets[0](x).argmax(1) == y).float().mean())
        assert acc > 0.6, (name, acc)


test_augmentation_family = check_family(AUGMENTATIONS)


class _TupleOutput(torch.nn.Module):
    """Returns (logits, features), as many vision models do; the losses must take the logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), x.flatten(1)


@pytest.mark.parametrize("name", NAMES)
def test_loss_takes_the_logits_of_a_tuple_output(name, tiny_net, tiny_data):
    x, y = tiny_data.x[:12], tiny_data.y[:12]
    tiny_net.eval()  # no dropout: the two calls see the same network
    aug = create(name)
    want = aug.loss(tiny_net, x, y, generator(0, name))
    got = aug.loss(_TupleOutput(tiny_net), x, y, generator(0, name))
    torch.testing.assert_close(got, want)
