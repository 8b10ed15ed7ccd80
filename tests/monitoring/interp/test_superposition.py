"""Toy models of superposition: the measures on hand-made geometries, and the dense / sparse / linear regimes."""

from __future__ import annotations

import math

import pytest
import torch

import mlsafety.monitoring.interp.superposition as sp
from mlsafety.core import InputError
from mlsafety.monitoring.interp.superposition import (
    antipodal_pairs,
    classify_feature,
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    feature_superposition,
    geometric_importance,
    train_toy_models,
)


def polygon(k: int) -> torch.Tensor:
    """``k`` unit features evenly spaced on a circle: W (2, k)."""
    a = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return torch.stack([a.cos(), a.sin()])


def test_antipodal_pair_has_dimensionality_one_half() -> None:
    W = torch.tensor([[1.0, -1.0]])  # n=2 features in m=1 dimension
    assert torch.allclose(feature_dimensionality(W), torch.tensor([0.5, 0.5]))
    assert torch.allclose(feature_superposition(W), torch.tensor([1.0, 1.0]))
    assert float(dimensions_per_feature(W)) == pytest.approx(0.5)
    assert antipodal_pairs(W) == [(0, 1)]


@pytest.mark.parametrize(("k", "expected"), [(3, 2 / 3), (5, 2 / 5)])
def test_regular_polygons_have_dimensionality_two_over_k(k: int, expected: float) -> None:
    W = polygon(k)
    assert torch.allclose(feature_dimensionality(W), torch.full((k,), expected, dtype=torch.float64))
    assert float(dimensions_per_feature(W)) == pytest.approx(expected)
    assert antipodal_pairs(W) == []


def test_dedicated_and_dropped_features() -> None:
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # two dedicated dimensions, one dropped feature
    assert torch.allclose(feature_dimensionality(W), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(feature_superposition(W)[:2], torch.zeros(2))
    assert classify_feature(W, 0).item() == 1 and classify_feature(W, 2).item() == 0
    assert classify_feature(torch.tensor([[1.0, -1.0]]), 1).item() == 2
    tetra = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]]) / math.sqrt(3)
    assert torch.allclose(feature_dimensionality(tetra), torch.full((4,), 0.75))  # 3/4 in 3 dimensions


TRAIN = {"steps": 800, "batch": 256, "lr": 2e-2, "seed": 0}


@pytest.fixture(scope="module")
def relu_models():  # type: ignore[no-untyped-def]
    return train_toy_models(5, 2, torch.tensor([0.0, 0.99]), geometric_importance(5, 0.7), **TRAIN)


def test_dense_features_give_the_top_m_features_and_no_superposition(relu_models) -> None:  # type: ignore[no-untyped-def]
    norms, sup = feature_norms(relu_models.W[0]), feature_superposition(relu_models.W[0])
    represented = norms > 0.5
    assert represented.tolist() == [True, True, False, False, False]  # the two most important, as PCA
    assert sup[represented].max() < 0.05


def test_sparse_features_are_superposed_in_antipodal_pairs(relu_models) -> None:  # type: ignore[no-untyped-def]
    W = relu_models.W[1]
    represented = feature_norms(W) > 0.5
    assert int(represented.sum()) > 2
    assert feature_superposition(W)[represented].min() > 0.5
    assert len(antipodal_pairs(W)) >= 1 or int(represented.sum()) == 5


def test_linear_model_never_superposes() -> None:
    S = torch.tensor([0.0, 0.9, 0.99])
    tm = train_toy_models(5, 2, S, geometric_importance(5, 0.7), linear=True, **TRAIN)
    norms = feature_norms(tm.W)
    represented = norms > 0.5
    assert (represented.sum(1) <= 2).all()
    assert feature_superposition(tm.W)[represented].max() < 0.05


def test_phase_diagram_corners_two_features_in_one_dimension() -> None:
    # (density 1 - S, importance of feature 1 relative to feature 0): dense and less important -> dropped,
    # dense and more important -> it takes the dimension, sparse -> the two share it as an antipodal pair.
    cells = [(1.0, 0.3), (1.0, 3.0), (0.03, 0.3), (0.03, 3.0)]
    sparsity = torch.tensor([1 - d for d, _ in cells])
    importance = torch.tensor([[1.0, r] for _, r in cells])
    tm = train_toy_models(2, 1, sparsity, importance, steps=400, batch=1024, lr=1e-2, restarts=3, cosine=True)
    assert classify_feature(tm.W, 1).tolist() == [0, 1, 2, 2]
    assert antipodal_pairs(tm.W[2]) == [(0, 1)] and antipodal_pairs(tm.W[3]) == [(0, 1)]


def test_restarts_keep_the_lowest_loss_and_find_the_pentagon() -> None:
    # Five features in two dimensions at high sparsity: a regular pentagon, D_i = 2/5 for each.
    args = (5, 2, torch.tensor([0.97]), geometric_importance(5, 0.9))
    kw = {"steps": 400, "batch": 1024, "lr": 2e-2, "cosine": True}
    one = train_toy_models(*args, restarts=1, **kw)
    best = train_toy_models(*args, restarts=4, **kw)
    assert float(best.loss[0]) <= float(one.loss[0]) + 1e-6  # restart 0 is the single run; the best is kept
    W = best.W[0]
    assert int((feature_norms(W) > 0.5).sum()) == 5
    assert torch.allclose(feature_dimensionality(W), torch.full((5,), 0.4), atol=0.03)
    unit = W / feature_norms(W)
    angles = torch.atan2(unit[1], unit[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    assert torch.allclose(gaps, torch.full((5,), 2 * math.pi / 5), atol=0.1)


@pytest.mark.parametrize("linear", [False, True])
def test_batched_training_equals_training_each_model_alone(linear: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Record the batched trainer's initial weights and data, then train each instance alone with autograd
    # and torch's Adam on plain (m, n) matrices: the batched run (hand-written gradient) must match it.
    inits: list[torch.Tensor] = []
    batches: list[torch.Tensor] = []
    real_init, real_draw = sp._init_weights, sp.sample_features

    def init(*args):  # type: ignore[no-untyped-def]
        inits.append(real_init(*args))
        return inits[-1].clone()

    def draw(*args):  # type: ignore[no-untyped-def]
        batches.append(real_draw(*args))
        return batches[-1]

    monkeypatch.setattr(sp, "_init_weights", init)
    monkeypatch.setattr(sp, "sample_features", draw)
    n, m, steps, lr = 6, 3, 40, 2e-2
    S, imp = torch.tensor([0.0, 0.6, 0.95]), geometric_importance(n, 0.8)
    tm = sp.train_toy_models(n, m, S, imp, linear=linear, steps=steps, batch=64, lr=lr, cosine=True, eval_batch=64)
    for k in range(3):
        W = inits[0][k].clone().requires_grad_()
        b = torch.zeros(n, requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for t in range(steps):
            x = batches[t][k]
            out = x @ W.T @ W + b
            loss = (imp * (x - (out if linear else torch.relu(out))).pow(2)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        assert (W - inits[0][k]).abs().max() > 0.1  # it did train
        assert torch.allclose(tm.W[k], W.detach(), atol=1e-4)
        assert torch.allclose(tm.b[k], b.detach(), atol=1e-4)


def test_sampled_features_have_the_asked_sparsity_and_uniform_values() -> None:
    # 0.5 takes the dense path (one uniform per entry), 0.95 and 0.995 the geometric-gap path.
    S = torch.tensor([0.5, 0.95, 0.995])
    x = sp.sample_features(S, 50, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (3, 4000, 50)
    for k, s in enumerate(S.tolist()):
        active = x[k] > 0
        p, total = 1 - s, active.numel()
        sd = (p * (1 - p) / total) ** 0.5
        assert abs(float(active.float().mean()) - p) < 5 * sd
        half = total // 2  # the gaps must cover the whole batch, not stop early
        flat = active.flatten()
        assert abs(float(flat[:half].float().mean()) - float(flat[half:].float().mean())) < 10 * sd
        v = x[k][active]
        assert float(v.max()) <= 1 and float(v.min()) >= 0
        assert abs(float(v.mean()) - 0.5) < 5 * (1 / 12 / v.numel()) ** 0.5 + 1e-3
        assert abs(float((v < 0.25).float().mean()) - 0.25) < 0.03


def test_bad_input_is_one_line() -> None:
    with pytest.raises(InputError, match="sparsity"):
        train_toy_models(3, 2, torch.tensor([1.0]), torch.ones(3), steps=1)
    with pytest.raises(InputError, match="importance must be"):
        train_toy_models(3, 2, torch.tensor([0.5]), torch.ones(4), steps=1)
    with pytest.raises(InputError, match="restarts"):
        train_toy_models(3, 2, torch.tensor([0.5]), torch.ones(3), restarts=0)
    with pytest.raises(InputError, match="one instance"):
        antipodal_pairs(torch.ones(2, 2, 3))
