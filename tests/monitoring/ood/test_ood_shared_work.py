"""Work the shared-pass engine does once for several detectors: selection, similarity, sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mlsafety.core import Classifier, InputError, NotFittedError, Outputs, generator
from mlsafety.monitoring import ood
from mlsafety.monitoring.ood import engine, search


def matrix(n: int, m: int, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, m, generator=generator(0, name), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("signs", ["mixed", "non-negative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 50, 1078])
def test_selection_matches_topk_across_blocks(dtype: torch.dtype, k: int, signs: str) -> None:
    x = matrix(700, 1078, "select", dtype)  # 121 rows per block: six blocks, the last one short
    if signs == "non-negative":
        x = x.relu()  # many exact zeros: ties
        if dtype == torch.float32:
            x[::7, ::5] = -0.0
    ref = x.topk(k, dim=1).values
    torch.testing.assert_close(search.kth_largest(x, k), ref[:, -1])
    tol = {"rtol": 1e-5, "atol": 1e-6 * k} if dtype == torch.float32 else {}  # summation order differs
    torch.testing.assert_close(search.top_k_sum(x, k), ref.sum(dim=1), **tol)
    assert torch.equal(x, matrix(700, 1078, "select", dtype) if signs == "mixed" else x.clone())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_keyed_selection_orders_every_float(dtype: type) -> None:
    special = [-np.inf, -3.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.25, 1.0, 7.0, np.inf]
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation(np.array(special, dtype=dtype)) for _ in range(20)])
    ordered = np.sort(rows, axis=1)
    for k in range(1, len(special) + 1):
        kth = search._select(rows.copy(), k, "kth")
        np.testing.assert_array_equal(kth, ordered[:, -k])
        if k < len(special):  # with -inf and +inf both in, the full sum is undefined
            sums = search._select(rows.copy(), k, "top-sum")
            np.testing.assert_array_equal(sums, ordered[:, -k:].sum(axis=1))


def test_selection_off_the_cpu_path_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    x = matrix(30, 40, "other-device")
    cpu = (search.kth_largest(x, 7), search.top_k_sum(x, 7))
    monkeypatch.setattr(search, "_on_cpu", lambda t: False)  # the torch.topk path other devices take
    torch.testing.assert_close(search.kth_largest(x, 7), cpu[0])
    torch.testing.assert_close(search.top_k_sum(x, 7), cpu[1])


@pytest.mark.parametrize("k", [0, 41])
def test_selection_rejects_k_outside_the_row(k: int) -> None:
    with pytest.raises(InputError, match="k must lie in"):
        search.kth_largest(matrix(3, 40, "bad-k"), k)


def test_unit_bank_drops_dead_columns_and_bank_search_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = matrix(300, 8, "bank").relu()
    bank[:, [1, 4]] = 0  # two units dead on all in-distribution data
    query = matrix(700, 8, "query").abs()  # ... but alive on the queries
    unit, columns = search.unit_bank(bank)
    assert columns.tolist() == [0, 2, 3, 5, 6, 7]
    sims = nn.functional.normalize(query, dim=1) @ nn.functional.normalize(bank, dim=1).T
    scale = matrix(1, 300, "conf").reshape(-1)
    searches = [search.Search("kth", 1), search.Search("kth", 9), search.Search("top-sum", 30, scale)]
    want = [sims.amax(dim=1), sims.topk(9, dim=1).values[:, -1], (sims * scale).topk(30, dim=1).values.sum(dim=1)]
    for chunk in (1024, 50):  # blocks of 873 and of 50 rows (the last one short)
        for got, ref in zip(search._fused_search(query, unit, columns, searches, chunk), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(search, "_on_cpu", lambda t: False)  # the topk path other devices take
    for got, ref in zip(search._fused_search(query, unit, columns, searches, 64), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bank_search_rejects_a_bad_search() -> None:
    unit, columns = search.unit_bank(matrix(10, 4, "b"))
    with pytest.raises(InputError, match="bad bank search"):
        search.bank_search(matrix(3, 4, "q"), unit, columns, search.Search("kth", 11))


def test_reuse_computes_once_per_sharing_block() -> None:
    calls: list[int] = []
    t = torch.ones(3)

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert engine.reuse("x", (t,), compute) == 1
    assert engine.reuse("x", (t,), compute) == 2  # no block: nothing is kept
    with engine.sharing():
        assert engine.reuse("x", (t,), compute) == 3
        with engine.sharing():  # a nested block joins the outer one
            assert engine.reuse("x", (t,), compute) == 3
        assert engine.reuse("x", (t,), compute, 5) == 4  # other params: another result
        assert engine.reuse("x", (t.clone(),), compute) == 5  # another tensor: another result
    with engine.sharing():
        assert engine.reuse("x", (t,), compute) == 6  # a new block starts empty


def relu_net(seed: int = 0) -> nn.Module:
    """Six ReLU features, two of them dead on inputs in [0, 1]."""
    g = generator(seed, "relu-net")
    first, head = nn.Linear(4, 6), nn.Linear(6, 3)
    with torch.no_grad():
        first.weight.copy_(torch.randn(6, 4, generator=g))
        first.bias.copy_(torch.randn(6, generator=g))
        first.weight[[2, 5]] = -first.weight[[2, 5]].abs()
        first.bias[[2, 5]] = -1.0
        head.weight.copy_(torch.randn(3, 6, generator=g))
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), head).eval()


def test_knn_and_nnguide_on_dead_units_equal_brute_force() -> None:
    net = relu_net()
    fit_x = torch.rand(60, 1, 2, 2, generator=generator(0, "fit"))
    x = torch.rand(25, 1, 2, 2, generator=generator(0, "x")) * 3 - 1  # queries wake some dead units
    knn, nng = ood.create("knn", k=4), ood.create("nnguide", k=6)
    ood.fit_detectors([knn, nng], net, fit_x)
    assert knn.columns_.numel() == 4
    got = ood.score_detectors([knn, nng], net, x)
    with torch.no_grad():
        f_fit, f_x = net[:3](fit_x), net[:3](x)
        conf = torch.logsumexp(net(fit_x), dim=1)
        u_fit, u_x = nn.functional.normalize(f_fit, dim=1), nn.functional.normalize(f_x, dim=1)
        dist = torch.cdist(u_x, u_fit).sort(dim=1).values[:, 3]
        guidance = (u_x @ (u_fit * conf[:, None]).T).topk(6, dim=1).values.mean(dim=1)
        nng_ref = -torch.logsumexp(net(x), dim=1) * guidance
    torch.testing.assert_close(got["knn"], dist, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["nnguide"], nng_ref, rtol=1e-5, atol=1e-6)


class _CountProducts(TorchFunctionMode):
    """Counts matrix products whose result has a given shape."""

    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm):
            self.count += tuple(out.shape) == self.shape
        return out


@pytest.mark.parametrize("order", [("knn", "nnguide"), ("nnguide", "knn")])
def test_one_engine_call_makes_one_similarity_matrix_for_knn_and_nnguide(order: tuple[str, str]) -> None:
    net = relu_net()
    fit_x = torch.rand(60, 1, 2, 2, generator=generator(0, "fit"))
    x = torch.rand(25, 1, 2, 2, generator=generator(0, "x"))
    dets = ood.fit_detectors([ood.create(n, k=4) for n in order], net, fit_x)
    with _CountProducts((25, 60)) as together:
        scores = ood.score_detectors(dets, net, x)
    with _CountProducts((25, 60)) as apart:
        alone = {det.name: det.score(net, x) for det in dets}
    assert (together.count, apart.count) == (1, 2)
    for name in order:
        torch.testing.assert_close(scores[name], alone[name])


def test_mahalanobis_and_rmd_share_their_class_gaussians() -> None:
    net = relu_net()
    fit = (torch.rand(60, 1, 2, 2, generator=generator(0, "fit")), torch.arange(60) % 3)
    maha, rmd = ood.fit_detectors([ood.create("mahalanobis"), ood.create("rmd")], net, fit)
    assert maha.precision_ is rmd.precision_  # one fit for both
    alone = ood.create("mahalanobis").fit(net, fit)
    torch.testing.assert_close(alone.precision_, maha.precision_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, params", [("mahalanobis", {}), ("energy", {}), ("energy", {"temperature": 0.3})])
def test_prepared_scorer_equals_score_outputs_bit_for_bit(name: str, params: dict, dtype: torch.dtype) -> None:
    """The runtime guard's scorers (state converted once, fewer operations) give the audit's scores exactly,
    at every batch size, on outputs of either dtype and on queries far outside the fit (large distances)."""
    net = relu_net()
    fit = (torch.rand(60, 1, 2, 2, generator=generator(0, "fit")), torch.arange(60) % 3)
    det = ood.create(name, **params).fit(net, fit)
    assert ood.create("msp").prepared_scorer() is None  # no prepared scorer: callers use score_outputs
    scorer = det.prepared_scorer()
    assert scorer is not None
    scale = torch.logspace(-1, 2, 400)[:, None, None, None]  # near the means and far from them
    x = (torch.rand(400, 1, 2, 2, generator=generator(0, "x")) * 2 - 1) * scale
    clf = Classifier(net)
    with torch.no_grad():
        feats, logits = clf.features_and_logits(x)
    for n in (1, 2, 7, 400):
        out = Outputs(logits[:n].to(dtype), feats[:n].to(dtype))
        want = det.score_outputs(clf, out)
        got = scorer(out)
        assert got.dtype == want.dtype == torch.float32 and got.shape == (n,)
        assert torch.equal(got, want), n
    with pytest.raises(NotFittedError, match="fit"):
        ood.create("mahalanobis").prepared_scorer()


def test_ash_and_scale_thresholds_equal_the_top_k_mask() -> None:
    f = matrix(40, 64, "acts").relu()
    f[:5] = 0.0
    f[5:10, :60] = 0.0  # rows with fewer live units than are kept: the threshold is zero
    for percentile in (60.0, 90.0):
        keep = max(1, 64 - round(64 * percentile / 100))
        idx = f.topk(keep, dim=1).indices
        pruned = torch.zeros_like(f).scatter_(1, idx, f.gather(1, idx))
        s1, s2 = f.sum(dim=1, keepdim=True), pruned.sum(dim=1, keepdim=True)
        ash_ref = pruned * torch.exp(s1 / s2.clamp_min(1e-12))
        torch.testing.assert_close(ood.create("ash", percentile=percentile).shape(f), ash_ref)
        torch.testing.assert_close(ood.create("ash", percentile=percentile, variant="p").shape(f), pruned)
        torch.testing.assert_close(search.top_k_sum(f, keep)[:, None], s2)


@pytest.mark.parametrize("name", [n for n in ood.available() if ood.DETECTORS.get(n).needs <= ood.SHARED_NEEDS])
def test_scores_stay_differentiable_for_monitor_aware_attacks(name: str) -> None:
    """The adaptive attack of the defence-in-depth check differentiates ``_score``; the fast CPU
    selection must step aside when gradients are needed, and give the same values."""
    net = relu_net()
    fit = (torch.rand(60, 1, 2, 2, generator=generator(0, "fit")), torch.arange(60) % 3)
    det = ood.create(name).fit(net, fit)
    clf = Classifier(net)
    x = torch.rand(9, 1, 2, 2, generator=generator(0, "x"), requires_grad=True)
    feats, logits = clf.features_and_logits(x)
    scores = det._score(clf, Outputs(logits, feats))
    with torch.no_grad():
        plain = det._score(clf, Outputs(logits.detach(), feats.detach()))
    torch.testing.assert_close(scores.detach().float(), plain.float(), rtol=1e-5, atol=1e-5)
    if scores.requires_grad:
        (grad,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
        assert grad is None or torch.isfinite(grad).all()
    if name in ("knn", "nnguide", "ash", "scale", "mahalanobis", "rmd"):
        assert scores.requires_grad
