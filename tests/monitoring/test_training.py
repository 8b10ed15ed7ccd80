"""Outlier exposure: the copy learns to be unsure on outliers; the original model is untouched."""

from __future__ import annotations

import pytest
import torch

from mlsafety.core import ArrayDataset, InputError, generator
from mlsafety.monitoring.training import outlier_exposure, outlier_set


def _entropy(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        logp = model(x).log_softmax(1)
    return float(-(logp.exp() * logp).sum(1).mean())


def _data() -> ArrayDataset:
    g = generator(0, "oe-data")
    y = torch.randint(0, 3, (90,), generator=g)
    x = 0.15 * torch.rand(90, 1, 8, 8, generator=g)
    x[torch.arange(90), 0, y * 2 + 1, :] += 0.8  # a class-specific bright row
    return ArrayDataset(x.clamp(0, 1), y, name="oe")


def test_outlier_exposure_raises_entropy_on_outliers_and_keeps_the_model(small_net) -> None:
    data = _data()
    outliers = outlier_set(data, copies=2)
    state = {k: v.clone() for k, v in small_net.state_dict().items()}
    flags = [p.requires_grad for p in small_net.parameters()]
    plain = outlier_exposure(small_net, data, outliers, epochs=25, weight=0.0, lr=1e-2)
    tuned = outlier_exposure(small_net, data, outliers, epochs=25, weight=1.0, lr=1e-2)
    assert all(torch.equal(state[k], v) for k, v in small_net.state_dict().items())
    assert flags == [p.requires_grad for p in small_net.parameters()] and not small_net.training
    assert not tuned.training
    # the outlier term is what makes the model unsure on outliers
    assert _entropy(tuned, outliers.x) > _entropy(plain, outliers.x) + 0.1
    # and the copy still fits the in-distribution labels
    with torch.no_grad():
        assert (tuned(data.x).argmax(1) == data.y).float().mean() > 0.8


def test_outlier_exposure_is_seeded(small_net) -> None:
    data = _data()
    outliers = outlier_set(data)
    a = outlier_exposure(small_net, data, outliers, epochs=1, seed=3)
    b = outlier_exposure(small_net, data, outliers, epochs=1, seed=3)
    c = outlier_exposure(small_net, data, outliers, epochs=1, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_outlier_set_is_made_from_the_data_only() -> None:
    data = _data()
    out = outlier_set(data, seed=1, copies=2)
    assert out.x.shape == (180, 1, 8, 8) and (out.y == -1).all() and out.kind == "far"
    assert torch.equal(out.x, outlier_set(data, seed=1, copies=2).x)
    with pytest.raises(InputError):
        outlier_set(data, copies=0)


def test_outlier_exposure_takes_any_data_form(small_net) -> None:
    # Tensors, or a DataLoader read in order, train exactly as the same ArrayDataset does.
    from torch.utils.data import DataLoader, TensorDataset

    data = _data()
    outliers = outlier_set(data)
    ref = outlier_exposure(small_net, data, outliers, epochs=1, seed=3)
    for form in ((data.x, data.y), DataLoader(TensorDataset(data.x, data.y), batch_size=32, shuffle=False)):
        got = outlier_exposure(small_net, form, outliers, epochs=1, seed=3)
        assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), got.parameters()))
    with pytest.raises(InputError, match="data"):
        outlier_exposure(small_net, data.x, outliers, epochs=1)  # no labels
