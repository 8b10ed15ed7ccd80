"""PGD adversarial training and TRADES: seeded, and they buy robustness on a small problem."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlsafety.core import ArrayDataset, InputError
from mlsafety.robustness import adversarial_training, evaluate, trades_training
from mlsafety.robustness.attacks import PGD


def _problem() -> tuple[ArrayDataset, ArrayDataset, nn.Module]:
    # Two classes that differ by a thin stripe (easy, non-robust) and a broad blob (robust):
    # clean training may rely on the stripe; adversarial training must learn the blob.
    g = torch.Generator().manual_seed(0)
    n = 160
    y = torch.arange(n) % 2
    x = 0.5 + 0.05 * torch.randn(n, 1, 4, 4, generator=g)
    sign = (2 * y - 1).float()[:, None]
    x[:, 0, 0, :] += 0.06 * sign  # stripe: 4 pixels, small contrast
    x[:, 0, 2:, :] += 0.2 * sign[:, :, None]  # blob: 8 pixels, larger contrast
    x = x.clamp(0, 1)
    train = ArrayDataset(x[:120], y[:120], name="toy")
    test = ArrayDataset(x[120:], y[120:], name="toy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    return train, test, model


def _fit(fn, model: nn.Module, train: ArrayDataset, **kw) -> nn.Module:  # type: ignore[no-untyped-def]
    return fn(copy.deepcopy(model), train, eps=0.15, steps=5, epochs=12, lr=0.01, batch_size=32, **kw)


@pytest.mark.parametrize("fn", [adversarial_training, trades_training])
def test_training_is_seeded_and_raises_robust_accuracy(fn) -> None:  # type: ignore[no-untyped-def]
    train, test, model = _problem()
    attack = PGD(eps=0.15, steps=10)
    a = _fit(fn, model, train, seed=1)
    b = _fit(fn, model, train, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not a.training and all(p.requires_grad for p in a.parameters())
    hardened = evaluate(a, test, attack).robust_accuracy.value
    plain = evaluate(_clean(model, train), test, attack).robust_accuracy.value
    assert hardened > plain + 0.2


def _clean(model: nn.Module, train: ArrayDataset) -> nn.Module:
    # the same loop with eps = 0 is plain training on clean inputs
    return adversarial_training(copy.deepcopy(model), train, eps=0.0, steps=1, epochs=12, lr=0.01, batch_size=32)


def test_training_input_checks() -> None:
    train, _, model = _problem()
    with pytest.raises(InputError):
        adversarial_training(model, ArrayDataset(train.x[:0], train.y[:0]), eps=0.1)
    with pytest.raises(InputError):
        trades_training(model, train, eps=0.1, epochs=0)


def test_trades_takes_batches_larger_than_the_attacks_chunk() -> None:
    """TRADES's KL hook holds the clean probabilities of the whole training batch; PGD once split a
    batch of more than its default 512 inputs into chunks and the hook raised on a shape mismatch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(520, 1, 2, 2, generator=g), torch.arange(520) % 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    out = trades_training(model, ArrayDataset(x, y), eps=0.1, steps=1, epochs=1, batch_size=520)
    assert not out.training
