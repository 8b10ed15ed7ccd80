"""Detectors that read intermediate layers (issue 19): the layer taps of the shared pass, and NAC, Gram,
MDS ensemble, Mahalanobis with input pre-processing and RankFeat against plain re-implementations of their
papers' formulas (per-sample loops in numpy / torch, no code shared with the detectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    InputError,
    block_layers,
    bounded_map,
    forward,
    generator,
    tap_layers,
)
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood
from mlsafety.monitoring.ood.gram import gram_features

LAYERED = ["gram", "mds-ensemble", "nac", "mahalanobis-pre", "rankfeat"]


class TinyCNN(nn.Module):
    """(N, 1, 8, 8) -> 3 classes: two conv stages, global average pooling and a linear head (ResNet's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.fixture
def tiny() -> TinyCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return TinyCNN().eval()


@pytest.fixture
def fit_set() -> ArrayDataset:
    g = generator(0, "layers-fit")
    return ArrayDataset(torch.rand(90, 1, 8, 8, generator=g), torch.randint(0, 3, (90,), generator=g), name="fit")


@pytest.fixture
def test_x() -> torch.Tensor:
    return torch.rand(40, 1, 8, 8, generator=generator(0, "layers-test"))


def _manual_acts(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Full outputs of the named layers, by hand-made hooks (one sample at a time)."""
    mods = dict(model.named_modules())
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        seen: dict[str, torch.Tensor] = {}
        keep = seen.__setitem__
        hs = [mods[n].register_forward_hook(lambda m, a, o, n=n, keep=keep: keep(n, o.detach())) for n in names]
        try:
            with torch.no_grad():
                model(x[i : i + 1])
        finally:
            for h in hs:
                h.remove()
        for n in names:
            got[n].append(seen[n][0])
    return {n: torch.stack(v) for n, v in got.items()}


def _rho(a: torch.Tensor, b: np.ndarray) -> float:
    return float(spearmanr(a.double().numpy(), b).statistic)


# -- the layer taps ---------------------------------------------------------------------------------
def test_block_layers_rule() -> None:
    assert block_layers(TinyCNN(), "fc") == ["body.1", "body.3"]  # a Sequential of plain layers: one per conv stage

    class ResNetish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
            self.layer1 = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3)), nn.Sequential(nn.Conv2d(4, 4, 3)))
            self.layer2 = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3)))
            self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

    assert block_layers(ResNetish(), "fc") == ["conv1", "bn1", "layer1", "layer2"]  # blocks kept whole
    from mlsafety import zoo

    assert block_layers(zoo.load_model("digits-cnn"), "fc") == ["features.1", "features.4", "hidden.3"]
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert block_layers(plain, "5") == ["1", "4"]  # a plain Sequential model: its stages, up to the head


def test_layer_collection_equals_a_manual_hook_run(tiny: TinyCNN, test_x: torch.Tensor) -> None:
    plain = forward(tiny, test_x)
    before = _hooks(tiny)
    out = forward(tiny, test_x, layers=["body.1", "body.3"], batch_size=16)
    assert plain.layers is None and _hooks(tiny) == before == 0
    assert torch.equal(out.logits, forward(tiny, test_x, batch_size=16).logits)  # the taps change nothing
    manual = _manual_acts(tiny, ["body.1", "body.3"], test_x)
    assert out.layers is not None
    for name, full in manual.items():
        torch.testing.assert_close(out.layers[name], full.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.layers["body.3"], out.features)  # the last stage pooled is the head's input
    mapped = forward(tiny, test_x, layers={"m": ("body.1", bounded_map(4 * 64))})
    assert mapped.layers is not None
    torch.testing.assert_close(mapped.layers["m"], manual["body.1"], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="more than the 100 allowed"):
        forward(tiny, test_x, layers={"m": ("body.1", bounded_map(100))})
    assert _hooks(tiny) == 0


def test_engine_feeds_layered_and_shared_detectors_from_one_pass(tiny: TinyCNN, fit_set, test_x) -> None:
    dets = [ood.create(n) for n in ("msp", "knn", "gram", "mds-ensemble")]
    calls: list[int] = []
    handle = tiny.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        ood.fit_detectors(dets, tiny, fit_set)
        assert sum(calls) == len(fit_set)
        calls.clear()
        together = ood.score_detectors(dets, tiny, test_x)
        assert sum(calls) == test_x.shape[0]
        given = forward(tiny, test_x)  # outputs without layers (the audit's pass): one more pass, for both
        calls.clear()
        again = ood.score_detectors(dets, tiny, test_x, outputs=given)
        assert sum(calls) == test_x.shape[0]
    finally:
        handle.remove()
    for det in dets:
        alone = ood.create(det.name).fit(tiny, fit_set).score(tiny, test_x)
        torch.testing.assert_close(together[det.name], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(again[det.name], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="need intermediate layers"):
        ood.score_detectors(dets, tiny, None, outputs=given)
    assert _hooks(tiny) == 0


def test_hooks_removed_and_mode_restored_after_an_exception(tiny: TinyCNN, fit_set) -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), Boom(), nn.Flatten(), nn.Linear(2, 3))
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        forward(model, torch.rand(4, 1, 8, 8), layers=["1"])
    with pytest.raises(RuntimeError, match="boom"), tap_layers(model, ["0", "1"]):
        model(torch.rand(2, 1, 8, 8))
    assert _hooks(model) == 0 and all(m.training for m in model.modules())
    for name in LAYERED:
        det = ood.create(name).fit(tiny, fit_set)
        with pytest.raises(Exception):  # noqa: B017 (any error: the hooks must go whatever it is)
            det.score(tiny, torch.rand(3, 2, 8, 8))  # two channels: the first conv refuses
        assert _hooks(tiny) == 0 and not tiny.training


@pytest.mark.parametrize("name", ["gram", "mds-ensemble", "nac"])
def test_a_missing_layer_is_named_with_the_valid_ones(name: str, tiny: TinyCNN, fit_set) -> None:
    with pytest.raises(InputError, match=r"no layer named 'body\.9'; its layers are: body, body\.0, body\.1"):
        ood.create(name, layers=["body.9"]).fit(tiny, fit_set)
    with pytest.raises(InputError, match="no layer named 'nope'"):
        ood.create("rankfeat", layer="nope").score(tiny, torch.rand(2, 1, 8, 8))
    assert _hooks(tiny) == 0


def test_rankfeat_refuses_a_model_without_a_feature_map() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(InputError, match=r"rankfeat needs a convolutional feature map \(N, C, H, W\)"):
        ood.create("rankfeat").score(mlp, torch.rand(2, 1, 8, 8))
    assert _hooks(mlp) == 0


# -- reference re-implementations -------------------------------------------------------------------
def _gram_feats(model: nn.Module, names: list[str], x: torch.Tensor, powers: int) -> dict[str, np.ndarray]:
    """Per layer (N, P, C): the row sums of each order's Gram matrix, signed p-th root (a loop per input)."""
    out = {}
    for n, a in _manual_acts(model, names, x).items():
        per = np.zeros((a.shape[0], powers, a.shape[1]))
        for i in range(a.shape[0]):
            f = a[i].reshape(a.shape[1], -1).double().numpy()
            for p in range(1, powers + 1):
                rows = ((f**p) @ (f**p).T).sum(axis=1)
                per[i, p - 1] = np.sign(rows) * np.abs(rows) ** (1.0 / p)
        out[n] = per
    return out


def _gram_dev(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """The paper's deviation of values ``v`` from the range [lo, hi], relative to the bound crossed."""
    total = 0.0
    for a, b, c in zip(v.ravel(), lo.ravel(), hi.ravel(), strict=True):
        if a < b:
            total += (b - a) / abs(b + 1e-6)
        if a > c:
            total += (a - c) / abs(c + 1e-6)
    return total


def _gram_brute(
    model: nn.Module, fit_x: torch.Tensor, test_x: torch.Tensor, names: list[str], powers: int
) -> np.ndarray:
    """Gram's score by the paper's formula: per-class bounds of the bounding split's predicted classes, an input
    measured against its predicted class's bounds, or where no bounding input was predicted as that class, the
    seen class of largest logit."""
    with torch.no_grad():
        ztr, zte = model(fit_x).numpy(), model(test_x).numpy()
    n = fit_x.shape[0]
    order = torch.randperm(n, generator=generator(0, "gram", "val-split")).numpy()  # the detector's seeded split
    val, bound = order[: round(0.1 * n)], order[round(0.1 * n) :]
    ptr = ztr.argmax(axis=1)
    seen = sorted({int(ptr[i]) for i in bound})

    def cls(z: np.ndarray) -> int:
        return max(seen, key=lambda c: z[c])

    ftr, fte = _gram_feats(model, names, fit_x, powers), _gram_feats(model, names, test_x, powers)
    want = np.zeros(test_x.shape[0])
    for n_ in names:
        lo, hi = {}, {}
        for c in seen:
            idx = [i for i in bound if ptr[i] == c]
            lo[c], hi[c] = ftr[n_][idx].min(axis=0), ftr[n_][idx].max(axis=0)
        expected = max(np.mean([_gram_dev(ftr[n_][i], lo[cls(ztr[i])], hi[cls(ztr[i])]) for i in val]), 1e-6)
        devs = [_gram_dev(fte[n_][i], lo[cls(zte[i])], hi[cls(zte[i])]) for i in range(test_x.shape[0])]
        want += np.array(devs) / expected
    return want


def test_gram_matches_the_paper_formula(tiny: TinyCNN, fit_set, test_x) -> None:
    powers, names = 4, ["body.1", "body.3"]
    det = ood.create("gram", powers=powers).fit(tiny, fit_set)
    got = det.score(tiny, test_x)
    want = _gram_brute(tiny, fit_set.x, test_x, names, powers)
    assert want.std() > 0
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-6)
    big = gram_features(10)(torch.full((1, 2, 3, 3), 1e4))  # 1e4 ** 20 would overflow float32 unscaled
    known = torch.tensor([18.0 ** (1 / p) * 1e8 for p in range(1, 11)], dtype=torch.float64)  # rows: 2 * 9 a^2p
    torch.testing.assert_close(big[0].double(), known[:, None].expand(10, 2), rtol=1e-5, atol=0)
    signed = 0.1 * torch.randn(5, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    signed[:, 0] -= 0.5  # a negative channel against two positive ones: odd orders give negative rows (signed roots)
    signed[:, 1:] += 1.0
    brute = np.zeros((5, 4, 3))
    for i in range(5):
        f = signed[i].reshape(3, -1).double().numpy()
        for p in range(1, 5):
            rows = ((f**p) @ (f**p).T).sum(axis=1)
            brute[i, p - 1] = np.sign(rows) * np.abs(rows) ** (1.0 / p)
    assert (brute < 0).any()
    np.testing.assert_allclose(gram_features(4)(signed).double().numpy(), brute, rtol=1e-4, atol=1e-5)
    assert _rho(got, want) >= 0.999


def test_gram_measures_an_input_of_an_unseen_class_against_the_seen_class_of_largest_logit(tiny: TinyCNN) -> None:
    """A class no bounding input is predicted as has no range: an input predicted as it is measured against the
    seen class of largest logit (brute force), not against pooled bounds over all classes, which are the widest
    of all and scored such inputs as the least anomalous."""
    g = generator(0, "layers-fit")
    x = torch.rand(90, 1, 8, 8, generator=g)
    test_x = torch.rand(40, 1, 8, 8, generator=generator(0, "layers-test"))
    with torch.no_grad():
        tiny.fc.bias -= tiny(x).mean(dim=0)  # centred logits: all three classes are predicted
        fit_x = x[tiny(x).argmax(dim=1) != 2]  # class 2 never predicted on the fit data
        unseen = tiny(test_x).argmax(dim=1) == 2
    assert 0 < int(unseen.sum()) < test_x.shape[0]
    powers, names = 3, ["body.1", "body.3"]
    det = ood.create("gram", powers=powers).fit(tiny, fit_x)
    assert det.seen_.tolist() == [True, True, False]
    got = det.score(tiny, test_x).double().numpy()
    want = _gram_brute(tiny, fit_x, test_x, names, powers)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # float32 features and bounds
    assert (want[unseen.numpy()] > 0).mean() > 0.8  # mostly outside the range of the class they are measured against


def test_gram_features_are_the_same_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The power loop runs over blocks of inputs in reused buffers: blocks of 2 (the last one short), then a second
    batch of another size through the same reduction, give each input's features as alone; vectors (C x 1 maps,
    their own path) as the brute-force Gram matrix says."""
    from mlsafety.monitoring.ood import gram

    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(5, 3, 4, 5, generator=g), 3.0 * torch.rand(4, 3, 4, 5, generator=g)]
    alone = [torch.cat([gram_features(3)(m[i : i + 1]) for i in range(m.shape[0])]) for m in maps]
    monkeypatch.setattr(gram, "_CHUNK", 2 * 3 * 4 * 5)
    reduce = gram_features(3)
    for m, want in zip(maps, alone, strict=True):
        torch.testing.assert_close(reduce(m), want, rtol=1e-5, atol=1e-6)
    vectors = torch.randn(7, 6, generator=g)  # a layer's vector output: a C x 1 map, its own path
    brute = np.zeros((7, 3, 6))
    for i in range(7):
        f = vectors[i].reshape(6, 1).double().numpy()
        for p in range(1, 4):
            rows = ((f**p) @ (f**p).T).sum(axis=1)
            brute[i, p - 1] = np.sign(rows) * np.abs(rows) ** (1.0 / p)
    np.testing.assert_allclose(reduce(vectors).double().numpy(), brute, rtol=1e-4, atol=1e-5)


def test_mds_ensemble_matches_the_paper_formula(tiny: TinyCNN, fit_set, test_x) -> None:
    names = ["body.1", "body.3"]
    got = ood.create("mds-ensemble").fit(tiny, fit_set).score(tiny, test_x)
    tr = {n: a.mean(dim=(2, 3)).double().numpy() for n, a in _manual_acts(tiny, names, fit_set.x).items()}
    te = {n: a.mean(dim=(2, 3)).double().numpy() for n, a in _manual_acts(tiny, names, test_x).items()}
    y = fit_set.y.numpy()
    want = np.zeros(test_x.shape[0])
    for n in names:
        f = tr[n]
        means = np.stack([f[y == c].mean(axis=0) for c in range(3)])
        cov = sum(np.outer(f[i] - means[y[i]], f[i] - means[y[i]]) for i in range(len(f))) / len(f)
        prec, rank = np.linalg.pinv(cov), np.linalg.matrix_rank(cov)
        for i, v in enumerate(te[n]):
            want[i] += min((v - m) @ prec @ (v - m) for m in means) / rank / len(names)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4)
    assert _rho(got, want) >= 0.999


def test_mahalanobis_pre_matches_the_paper_formula(tiny: TinyCNN, fit_set, test_x) -> None:
    eps = 0.01
    got = ood.create("mahalanobis-pre", eps=eps).fit(tiny, fit_set).score(tiny, test_x)
    plain = ood.create("mahalanobis-pre", eps=0.0).fit(tiny, fit_set).score(tiny, test_x)
    torch.testing.assert_close(plain, ood.create("mahalanobis").fit(tiny, fit_set).score(tiny, test_x))
    f = _manual_acts(tiny, ["body"], fit_set.x)["body"].mean(dim=(2, 3)).double().numpy()
    y = fit_set.y.numpy()
    means = np.stack([f[y == c].mean(axis=0) for c in range(3)])
    cov = sum(np.outer(f[i] - means[y[i]], f[i] - means[y[i]]) for i in range(len(f))) / len(f)
    mu, prec = torch.tensor(means), torch.tensor(np.linalg.pinv(cov))

    def dists(x: torch.Tensor) -> torch.Tensor:
        feat = tiny.pool(tiny.body(x)).flatten(1).double()
        return torch.stack([((feat - m) @ prec * (feat - m)).sum(dim=1) for m in mu], dim=1)

    want = []
    for i in range(test_x.shape[0]):
        xi = test_x[i : i + 1].clone().requires_grad_(True)
        d = dists(xi)
        d[0, int(d.argmin())].backward()
        assert xi.grad is not None
        x2 = (test_x[i : i + 1] - eps * xi.grad.sign()).clamp(0, 1)
        with torch.no_grad():
            want.append(float(dists(x2).min()))
    w = np.array(want)
    assert float((got - plain).abs().max()) > 1e-3  # the step does something
    np.testing.assert_allclose(got.double().numpy(), w, rtol=1e-3, atol=1e-5)
    assert _rho(got, w) >= 0.999


def test_nac_matches_the_paper_formula(tiny: TinyCNN, fit_set, test_x) -> None:
    beta, bins, share, names = 20000.0, 20, 0.05, ["body.1", "body.3"]  # an untrained net: small gradients
    got = ood.create("nac", beta=beta, bins=bins, o_share=share).fit(tiny, fit_set).score(tiny, test_x)
    mods = dict(tiny.named_modules())

    def states(x: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
        per: list[list[np.ndarray]] = [[] for _ in names]
        preds = []
        for i in range(x.shape[0]):
            seen: dict[str, torch.Tensor] = {}
            hs = [mods[n].register_forward_hook(lambda m, a, o, n=n, seen=seen: seen.__setitem__(n, o)) for n in names]
            try:
                xi = x[i : i + 1].clone().requires_grad_(True)
                logits = tiny(xi)
            finally:
                for h in hs:
                    h.remove()
            p = logits.softmax(dim=1)[0]
            kl = sum((1 / 3) * (torch.log(torch.tensor(1 / 3)) - torch.log(p[k])) for k in range(3))
            grads = torch.autograd.grad(kl, [seen[n] for n in names])
            for j, n in enumerate(names):
                prod = (seen[n] * grads[j])[0].detach().double()  # (C, H, W)
                per[j].append(1 / (1 + np.exp(-beta * prod.mean(dim=(1, 2)).numpy())))
            preds.append(int(logits.argmax()))
        return [np.stack(v) for v in per], np.array(preds)

    s_fit, p_fit = states(fit_set.x)
    right = p_fit == fit_set.y.numpy()
    o = max(1.0, share * right.sum())
    covs = []
    for s in s_fit:
        counts = np.zeros((s.shape[1], bins))
        for row in s[right]:
            for c, v in enumerate(row):
                counts[c, min(int(v * bins), bins - 1)] += 1
        covs.append(np.minimum(counts / o, 1.0))
    s_test, _ = states(test_x)
    want = np.zeros(test_x.shape[0])
    for s, cov in zip(s_test, covs, strict=True):
        for i, row in enumerate(s):
            want[i] -= np.mean([cov[c, min(int(v * bins), bins - 1)] for c, v in enumerate(row)]) / len(names)
    assert want.std() > 0
    close = np.isclose(got.double().numpy(), want, rtol=1e-6, atol=1e-9)
    assert close.mean() >= 0.95  # a state exactly on a bin edge may round to the other bin
    assert _rho(got, want) >= 0.999


def test_rankfeat_matches_the_paper_formula(tiny: TinyCNN, test_x) -> None:
    got = ood.create("rankfeat").score(tiny, test_x)
    with torch.no_grad():
        maps = tiny.body(test_x).double().numpy()
    w, b = tiny.fc.weight.detach().double().numpy(), tiny.fc.bias.detach().double().numpy()
    want = []
    for m in maps:
        x = m.reshape(m.shape[0], -1)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        x2 = x - s[0] * np.outer(u[:, 0], vt[0])
        logits = w @ x2.mean(axis=1) + b
        want.append(-np.log(np.exp(logits).sum()))
    np.testing.assert_allclose(got.double().numpy(), np.array(want), rtol=1e-5, atol=1e-6)
    power = ood.create("rankfeat", method="power", iterations=50).score(tiny, test_x)
    assert _rho(power, np.array(want)) >= 0.999  # the fast variant ranks inputs alike
    rankfeat = ood.create("rankfeat")
    assert rankfeat.map_layer(Classifier(tiny), test_x[:1]) == "body"  # the last map before global pooling
    assert ood.create("rankfeat", layer="body.1").score(tiny, test_x).shape == (test_x.shape[0],)


class SharedReLUCNN(nn.Module):
    """Two conv stages through one ReLU module (called twice, as in many hand-written CNNs), then global average
    pooling and a linear head: the last feature map is the ReLU's second output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_rankfeat_changes_only_the_last_map_of_a_reused_layer(test_x) -> None:
    # the ReLU module also gives the first stage's map; removing its rank-1 component there too (a hook that
    # changed every call of the module) is not the paper's score
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SharedReLUCNN().eval()
    got = ood.create("rankfeat").score(net, test_x)
    with torch.no_grad():
        maps = net.relu(net.conv2(net.relu(net.conv1(test_x)))).double().numpy()
    w, b = net.fc.weight.detach().double().numpy(), net.fc.bias.detach().double().numpy()
    want = []
    for m in maps:
        x = m.reshape(m.shape[0], -1)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        logits = w @ (x - s[0] * np.outer(u[:, 0], vt[0])).mean(axis=1) + b
        want.append(-np.log(np.exp(logits).sum()))
    np.testing.assert_allclose(got.double().numpy(), np.array(want), rtol=1e-5, atol=1e-6)
    assert _hooks(net) == 0


# -- a planted shift ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAYERED)
def test_separates_digits_from_a_planted_shift(name: str) -> None:
    from mlsafety import zoo

    model = zoo.load_model("digits-cnn")
    fit = zoo.load_dataset("digits", "train")
    x_in = zoo.load_dataset("digits", "test").x[:150]
    shifted = x_in.roll(3, dims=-1)  # digits moved 3 of 8 pixels to the right (wrapping round)
    det = ood.create(name).fit(model, fit)
    a = float(auroc(det.score(model, x_in), det.score(model, shifted)))
    assert a > 0.75, f"{name}: AUROC {a:.3f} against shifted digits"


# -- in the audit ------------------------------------------------------------------------------------
def _audit_ctx(model: nn.Module):  # type: ignore[no-untyped-def]
    from mlsafety.audit._context import AuditContext, AuditData

    g = generator(0, "layers-audit")

    def ds(n: int, name: str, kind: str = "in") -> ArrayDataset:
        return ArrayDataset(
            torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), name, kind=kind
        )

    data = AuditData(test=ds(20, "test"), val=ds(20, "val"), train=ds(30, "train"), ood={"far": ds(10, "far", "far")})
    return AuditContext(Classifier(model), data)


def test_the_audit_runs_opt_in_detectors_only_when_named_and_skips_what_cannot_run(tiny: TinyCNN) -> None:
    from mlsafety.audit import CHECKS

    assert set(LAYERED) <= set(ood.DETECTORS.tagged(ood.OPT_IN))
    ctx = _audit_ctx(tiny)
    full = CHECKS.create("ood").names(ctx)
    assert not set(full) & set(LAYERED) and "knn" in full  # the default profile's detectors as before
    assert not set(CHECKS.create("ood").skipped(ctx)) & set(LAYERED)
    assert CHECKS.create("ood", detectors=LAYERED).names(ctx) == LAYERED
    assert "rankfeat" in CHECKS.create("ood", default="rankfeat").names(ctx)  # the user's monitor joins

    mlp = _audit_ctx(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)))
    from mlsafety.audit.checks.ood import skipped

    why = skipped(mlp)
    assert why["rankfeat"].startswith("rankfeat needs a convolutional feature map") and "gram" not in why
    with pytest.raises(InputError, match=r"--ood-detector rankfeat: the detector rankfeat needs a convolutional"):
        CHECKS.create("ood", default="rankfeat").names(mlp)


def test_mds_ensemble_weights_fitted_on_noisy_in_distribution_inputs_match_sklearn(tiny: TinyCNN, fit_set) -> None:
    from sklearn.linear_model import LogisticRegression

    det = ood.create("mds-ensemble").fit(tiny, fit_set)
    assert det.weights_ == [0.5, 0.5]  # equal by default
    x = torch.rand(60, 1, 8, 8, generator=generator(0, "layers-weights"))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=generator(1, "layers-weights"))).clamp(0, 1)
    det.fit_weights(tiny, x, noisy, l2=0.5)
    d = np.concatenate([det.layer_scores(forward(tiny, v, layers=["body.1", "body.3"])).numpy() for v in (x, noisy)])
    mean, std = d.mean(axis=0), d.std(axis=0, ddof=1)
    ref = LogisticRegression(C=1 / 0.5, tol=1e-12, max_iter=10_000).fit((d - mean) / std, [0] * 60 + [1] * 60)
    np.testing.assert_allclose(det.weights_, ref.coef_[0] / std, rtol=1e-4, atol=1e-8)
    default = ood.create("mds-ensemble").fit(tiny, fit_set).fit_weights(tiny, x)  # seeded noise of its own
    assert default.weights_ == ood.create("mds-ensemble").fit(tiny, fit_set).fit_weights(tiny, x).weights_
