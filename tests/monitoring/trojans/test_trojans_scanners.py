"""Trojan scanners: conformance over SCANNERS, and a test per algorithm that a wrong version would fail."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trojans_support import TARGET, Tiny

from mlsafety.core import ArrayDataset, InputError
from mlsafety.metrics import auroc
from mlsafety.monitoring.trojans import SCANNERS, anomaly_index
from mlsafety.monitoring.trojans.scanners import ScanResult, create, strip_entropy
from mlsafety.monitoring.trojans.scanners._features import kmeans2, silhouette
from mlsafety.monitoring.trojans.scanners.abs import ABS, _margins, last_feature_map
from mlsafety.monitoring.trojans.scanners.strip import frr_cut
from tests.support.family import check_family

FAST: dict[str, dict[str, Any]] = {
    "neural-cleanse": {"steps": 20, "batch_size": 4, "epoch_steps": 5, "max_inputs": 64},
    "abs": {"steps": 10, "batch_size": 8, "per_class": 1, "levels": 4, "candidates": 2},
    "strip": {"overlays": 4},
    "activation-clustering": {},
    "spectral-signatures": {},
}


def _inputs(tiny: Tiny, digits: dict[str, ArrayDataset]) -> dict[str, Any]:
    test = digits["test"]
    probe = torch.cat([test.x[:20], tiny.attack.apply_trigger(test.x[20:40])])
    return {"clean": digits["val"].subset(torch.arange(120)), "train": tiny.train, "probe": probe}


def _fast(name: str, seeds: tuple[int, ...] = (0, 1)) -> Any:
    return create(name, seeds=seeds, **FAST[name])


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_every_scanner_has_fast_settings() -> None:
    assert sorted(FAST) == SCANNERS.available()


# The family contract (names, docstrings, declared parameters, rebuild, repr, unknown parameters,
# out-of-bounds values, tags) over every registered scanner.
test_scanner_family = check_family(
    SCANNERS,
    make_params=lambda name: FAST[name],
    known_tags=("share-score", "mad-score", "seed-spread"),
)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"seeds": ()}, "neural-cleanse seeds must hold at least one seed"),
        ({"seeds": "012"}, "neural-cleanse seeds must be a tuple of integers"),
        ({"seeds": (0, 1.5)}, "neural-cleanse seeds must be a tuple of integers"),
        ({"steps": 3, "epoch_steps": 5}, "neural-cleanse steps must be >= epoch_steps (5), got 3"),
    ],
)
def test_scanner_cross_parameter_checks(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputError) as info:
        create("neural-cleanse", **params)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_seeds_are_stored_as_a_tuple_of_ints() -> None:
    assert create("strip", seeds=[3, 4.0]).seeds == (3, 4)
    assert create("spectral-signatures").seeds == (0,)  # a scanner may change a base default


@pytest.mark.parametrize("name", SCANNERS.available())
def test_scanner_conformance(name: str, tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    model = tiny_trojaned.model
    inputs = _inputs(tiny_trojaned, digits)
    saved_x = {k: (v.x if isinstance(v, ArrayDataset) else v).clone() for k, v in inputs.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.fc.weight.requires_grad_(False)
    try:
        res = _fast(name).scan(model, **inputs)
        again = _fast(name).scan(model, **inputs)
        # model restored: mode, flags, hooks, weights; inputs untouched
        assert all(m.training for m in model.modules())
        assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
        assert _hooks(model) == 0
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        for k, v in inputs.items():
            assert torch.equal(v.x if isinstance(v, ArrayDataset) else v, saved_x[k])
    finally:
        model.eval()
        model.fc.weight.requires_grad_(True)
    # deterministic with a seed
    assert res.scores == again.scores and res.targets == again.targets
    # the result is well-formed
    assert isinstance(res, ScanResult) and res.scanner == name
    assert len(res.scores) == 2 and all(torch.isfinite(torch.tensor(res.scores)))
    assert res.flagged == (res.score > res.threshold)
    assert 0.0 <= res.flag_rate <= 1.0
    assert all(0 <= t < 10 for t in res.targets)
    assert res.score_std >= 0
    if res.per_class is not None:
        assert res.per_class.shape == (10,)
    if res.sample_scores is not None:
        n = inputs["probe"].shape[0] if "probe" in SCANNERS.get(name).needs else len(inputs["train"])
        assert res.sample_scores.shape == (n,)
    for trig in res.triggers.values():
        assert trig.mask.shape == (1, 8, 8) and trig.pattern.shape == (1, 8, 8)
        assert float(trig.mask.min()) >= 0 and float(trig.mask.max()) <= 1


@pytest.mark.parametrize("name", SCANNERS.available())
def test_scan_reads_a_dataloader_and_a_torch_dataset_like_an_array_dataset(
    name: str, tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]
) -> None:
    inputs = _inputs(tiny_trojaned, digits)
    clean, train = inputs["clean"], inputs["train"]
    want = _fast(name, seeds=(0,)).scan(tiny_trojaned.model, **inputs)
    forms = {
        "data-loader": lambda d: DataLoader(TensorDataset(d.x, d.y), batch_size=32),
        "torch-dataset": lambda d: TensorDataset(d.x, d.y),
    }
    for form, make in forms.items():
        got = _fast(name, seeds=(0,)).scan(tiny_trojaned.model, make(clean), train=make(train), probe=inputs["probe"])
        assert got.scores == want.scores and got.targets == want.targets, form
        if want.sample_scores is not None:
            assert got.sample_scores is not None and torch.equal(got.sample_scores, want.sample_scores), form


def test_scan_refuses_data_it_cannot_read(tiny_trojaned: Tiny) -> None:
    with pytest.raises(InputError, match="clean: cannot read data of type str"):
        _fast("strip").scan(tiny_trojaned.model, "val.npz")


@pytest.mark.parametrize("name", SCANNERS.available())
def test_scanner_restores_model_after_exception(
    name: str, tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]
) -> None:
    model = tiny_trojaned.model
    calls = {"n": 0}

    def boom(_m: nn.Module, _i: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("boom")

    handle = model.fc.register_forward_pre_hook(boom)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _fast(name).scan(model, **_inputs(tiny_trojaned, digits))
        assert all(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
    finally:
        handle.remove()
        model.eval()
    assert _hooks(model) == 0


@pytest.mark.parametrize("name", ["strip", "activation-clustering"])
def test_scanner_says_what_data_it_needs(name: str, tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    with pytest.raises(InputError, match="needs"):
        _fast(name).scan(tiny_trojaned.model, digits["val"])


def test_anomaly_index_hand_computed() -> None:
    norms = torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0])
    # median 11; absolute deviations 10, 1, 0, 1, 2 -> MAD 1; scaled by 1.4826
    expected = (11.0 - norms) / 1.4826
    torch.testing.assert_close(anomaly_index(norms), expected)


def test_neural_cleanse_finds_the_target_and_its_trigger(tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    res = create("neural-cleanse", seeds=(0,), steps=100).scan(tiny_trojaned.model, digits["val"])
    assert int(res.per_class.argmax()) == TARGET  # type: ignore[union-attr]
    trig = res.triggers[TARGET]
    assert trig.l1 == min(t.l1 for t in res.triggers.values())
    others = digits["test"].x[digits["test"].y != TARGET]
    pred = tiny_trojaned.model(trig.apply_trigger(others)).argmax(dim=1)
    assert float((pred == TARGET).float().mean()) > 0.9
    # the mask sits on the planted patch (bottom-right 3x3) more than anywhere else
    mask = trig.mask[0]
    assert float(mask[5:, 5:].mean()) > float(mask[:5, :5].mean())


class _Const(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(1, logits.shape[0])
        self.register_buffer("out", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(x.shape[0], -1) + 0 * self.fc(x[:, :1, 0, 0])


def test_strip_entropy_known_values() -> None:
    from mlsafety.core import Classifier, generator

    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    certain = Classifier(_Const(torch.tensor([50.0, 0.0, 0.0, 0.0])))
    uniform = Classifier(_Const(torch.zeros(4)))
    assert float(strip_entropy(certain, x, x, 3, generator(0)).max()) < 1e-6
    torch.testing.assert_close(
        strip_entropy(uniform, x, x, 3, generator(0)), torch.full((5,), float(torch.log(torch.tensor(4.0))))
    )


def test_strip_separates_triggered_inputs(tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    inputs = _inputs(tiny_trojaned, digits)
    res = create("strip", seeds=(0,), overlays=8).scan(tiny_trojaned.model, **inputs)
    s = res.sample_scores
    assert s is not None
    assert float(auroc(s[:20], s[20:])) > 0.9
    assert res.flagged and res.targets == [TARGET]


def test_margins_hand_computed() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0]])
    torch.testing.assert_close(_margins(logits), torch.tensor([[1.0, -2.0, -1.0]]))


class _Wired(nn.Module):
    """A conv feature map with 4 channels; channel 2 alone drives label 3, channel 0 weakly drives label 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 64, 5)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.2]))
            self.fc.weight[3, 2 * 64 : 3 * 64] = 1.0
            self.fc.weight[1, 0:64] = 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def test_abs_stimulation_finds_the_wired_channel() -> None:
    from mlsafety.core import Classifier

    model = _Wired().eval()
    clf = Classifier(model)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    y = torch.arange(10) % 5
    assert last_feature_map(clf, x) == "relu"
    elevation = ABS(levels=4)._stimulate(clf, model.relu, x, y)
    assert elevation.shape == (4, 5)
    best = elevation.max(dim=1)
    assert int(best.values.argmax()) == 2 and int(best.indices[2]) == 3


def _planted_features() -> tuple[nn.Module, ArrayDataset, torch.Tensor]:
    """A model whose features are the input pixels, and a training set with a poisoned cluster in class 0."""
    g = torch.Generator().manual_seed(0)
    n_per, k = 40, 4
    centres = torch.rand(k, 64, generator=g)
    x = torch.cat([centres[c] + 0.05 * torch.randn(n_per, 64, generator=g) for c in range(k)])
    y = torch.arange(k).repeat_interleave(n_per)
    poisoned = torch.zeros(len(y), dtype=torch.bool)
    poisoned[:8] = True  # 8 of class 0's 40 samples carry a strong extra pattern
    x[:8, :16] += 0.6
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, k)).eval()
    return model, ArrayDataset(x.clamp(0, 1).reshape(-1, 1, 8, 8), y), poisoned


@pytest.mark.parametrize("name", ["activation-clustering", "spectral-signatures"])
def test_data_scanners_find_a_planted_cluster(name: str) -> None:
    model, train, poisoned = _planted_features()
    res = create(name, seeds=(0,)).scan(model, train, train=train)
    assert res.flagged and res.targets == [0]
    s = res.sample_scores
    assert s is not None and float(auroc(s[~poisoned], s[poisoned])) > 0.95


def test_kmeans_and_silhouette_match_scikit_learn() -> None:
    from sklearn.metrics import silhouette_score

    from mlsafety.core import generator

    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(30, 3, generator=g), torch.randn(12, 3, generator=g) + 4])
    labels = kmeans2(z, generator(0))
    truth = torch.arange(42) >= 30
    assert torch.equal(labels.bool(), truth) or torch.equal(~labels.bool(), truth)
    assert silhouette(z, labels) == pytest.approx(float(silhouette_score(z.numpy(), labels.numpy())), abs=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", SCANNERS.available())
def test_scanner_runs_on_cuda(name: str, tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]) -> None:
    import copy

    model = copy.deepcopy(tiny_trojaned.model).cuda()
    inputs = _inputs(tiny_trojaned, digits)
    res = _fast(name).scan(model, **inputs)
    cpu = _fast(name).scan(tiny_trojaned.model, **inputs)
    assert len(res.scores) == len(cpu.scores) and all(torch.isfinite(torch.tensor(res.scores)))
    if name == "spectral-signatures":  # no optimisation, no randomness: the same numbers up to float error
        assert res.score == pytest.approx(cpu.score, rel=1e-3, abs=1e-3)
    for trig in res.triggers.values():
        x = digits["test"].x[:4].cuda()
        assert trig.apply_trigger(x).device == x.device


class _Scripted:
    """Per-seed findings fed to the base class's aggregation."""

    @staticmethod
    def aggregate(runs: list[Any], threshold: float = 2.0) -> ScanResult:
        from mlsafety.monitoring.trojans.scanners import Scanner

        class S(Scanner):
            name = "scripted"

        return S(seeds=tuple(range(len(runs))), threshold=threshold)._aggregate(runs)


def test_aggregation_verdict_spread_and_targets() -> None:
    from mlsafety.monitoring.trojans.scanners import SeedScan

    pc = torch.tensor([0.0, 1.0, 3.0])
    majority = _Scripted.aggregate([SeedScan(3.0, [2], pc), SeedScan(2.5, [2, 1], pc), SeedScan(1.0, [], pc)])
    assert majority.score == pytest.approx(6.5 / 3) and majority.flagged and majority.targets == [2]
    assert majority.flag_rate == pytest.approx(2 / 3)
    assert majority.score_std == pytest.approx(float(torch.tensor([3.0, 2.5, 1.0]).std(unbiased=False)))
    split = _Scripted.aggregate([SeedScan(2.5, [1], pc), SeedScan(1.9, [], pc)])
    assert split.flagged and split.targets == [1], "flagged without a majority: the class most seeds name"
    silent = _Scripted.aggregate([SeedScan(2.5, [], pc), SeedScan(2.1, [], pc)])
    assert silent.targets == [2], "no seed names one: the arg-max of the per-class statistic"
    clean = _Scripted.aggregate([SeedScan(1.0, [1], pc), SeedScan(0.5, [], pc)])
    assert not clean.flagged and clean.targets == []


def test_spectral_signatures_by_hand_with_numpy() -> None:
    """Each sample's score is its squared projection on the top right singular vector of its class's centred
    features, over the class median; each class's index is the MAD z-score (above the median) of its top
    direction's variance share sigma_1^2 / sum sigma_i^2."""
    import numpy as np

    model, train, _ = _planted_features()
    res = create("spectral-signatures").scan(model, train, train=train)
    feats = train.x.flatten(1).double().numpy()  # the head's input: the pixels
    y = train.y.numpy()
    shares, want = [], np.zeros(len(y))
    for c in range(4):
        r = feats[y == c] - feats[y == c].mean(axis=0)
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        proj = (r @ vt[0]) ** 2
        want[y == c] = proj / np.median(proj)
        shares.append(s[0] ** 2 / (s**2).sum())
    share = np.array(shares)
    med = np.median(share)
    index = (share - med) / (1.4826 * np.median(np.abs(share - med)))
    assert res.sample_scores is not None and res.per_class is not None
    np.testing.assert_allclose(res.sample_scores.numpy(), want, rtol=1e-4)
    np.testing.assert_allclose(res.per_class.numpy(), index, rtol=1e-4)
    assert res.score == pytest.approx(index.max(), rel=1e-5)


def test_strip_cut_is_the_clean_frr_quantile_and_the_score_the_share_below_it(
    tiny_trojaned: Tiny, digits: dict[str, ArrayDataset]
) -> None:
    """The clean entropies (pool superimposed on pool) set the cut at their ``frr`` quantile; the score is the
    share of probe inputs whose entropy is below it (low entropy = triggered), the seed's stream drawing the
    clean overlays first."""
    from mlsafety.core import Classifier, generator

    inputs = _inputs(tiny_trojaned, digits)
    scanner = create("strip", seeds=(5,), overlays=4, frr=0.2)
    res = scanner.scan(tiny_trojaned.model, inputs["clean"], probe=inputs["probe"])
    clf, pool = Classifier(tiny_trojaned.model), inputs["clean"].x
    g = generator(5, "scanner", "strip")
    clean_ent = strip_entropy(clf, pool, pool, 4, g)
    probe_ent = strip_entropy(clf, inputs["probe"], pool, 4, g)
    cut = float(frr_cut(clean_ent, 0.2))
    assert res.extra["entropy_threshold"] == pytest.approx(cut, rel=1e-6)
    assert float((clean_ent < cut).float().mean()) == pytest.approx(0.2, abs=1 / len(pool))
    assert res.score == pytest.approx(float((probe_ent < cut).float().mean()))
    torch.testing.assert_close(res.sample_scores, -probe_ent)


def test_activation_clustering_scores_only_classes_with_a_small_cluster() -> None:
    """A class split 8 / 32 scores its silhouette; a class split 20 / 20 (more than max_share in the smaller
    cluster) scores 0, however well separated."""
    import numpy as np
    from sklearn.metrics import silhouette_score

    model, train, poisoned = _planted_features()
    x = train.x.clone().flatten(1)
    x[40:60, 16:32] += 0.6  # class 1: half of it moves, an even split
    even = ArrayDataset(x.clamp(0, 1).reshape(-1, 1, 8, 8), train.y)
    res = create("activation-clustering", seeds=(0,)).scan(model, even, train=even)
    assert res.per_class is not None
    assert float(res.per_class[1]) == 0.0
    z = even.x.flatten(1)[:40].double().numpy()
    z = z - z.mean(axis=0)
    z = z @ np.linalg.svd(z, full_matrices=False)[2][:10].T  # the top 10 principal directions
    want = silhouette_score(z, poisoned[:40].numpy().astype(int))  # 2-means finds the planted 8 / 32 split
    assert float(res.per_class[0]) == pytest.approx(float(want), abs=1e-5)


def test_neural_cleanse_flags_only_small_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The score is the largest signed index (a class far above the median norm is not an outlier); the
    flagged classes are those whose index exceeds the threshold, most anomalous first; the norms are the
    masks' L1 norms."""
    from mlsafety.monitoring.trojans.scanners import Trigger, neural_cleanse

    norms = [20.0, 21.0, 19.0, 4.0, 22.0, 20.5, 90.0, 19.5, 6.0, 21.5]

    def fake(clf: Any, x: torch.Tensor, classes: list[int], g: torch.Generator, **_: Any) -> list[Trigger]:
        masks = [torch.full((1, 8, 8), n / 64) for n in norms]
        return [Trigger(m, torch.zeros(1, 8, 8), c, "neural-cleanse") for m, c in zip(masks, classes)]

    monkeypatch.setattr(neural_cleanse, "reverse_engineer", fake)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    clean = ArrayDataset(torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 10)
    res = create("neural-cleanse", seeds=(0,)).scan(model, clean)
    med = 20.25  # the mean of the two middle norms, 20.0 and 20.5
    mad = 1.4826 * 1.25  # deviations sorted: 0.25 0.25 0.75 0.75 1.25 1.25 1.75 14.25 16.25 69.75
    want = (med - torch.tensor(norms, dtype=torch.float64)) / mad
    torch.testing.assert_close(res.per_class.double(), want, rtol=1e-5, atol=1e-5)  # type: ignore[union-attr]
    assert res.score == pytest.approx(float(want[3]), rel=1e-5)  # class 6's |index| (37.6) is larger, but above
    assert res.targets == [3, 8] and res.extra["l1_class_6"] == pytest.approx(90.0)


class _Gate(nn.Module):
    """A conv feature map (the identity) read by a rule: class 4 when the bottom-right 2x2 block is white and
    pixel (0, 0) is bright, else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1, 5)  # the head: five classes (its output is multiplied by 0)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.relu(self.conv(x))
        hit = (f[:, 0, 6:, 6:] >= 1 - 1e-6).flatten(1).all(dim=1) & (f[:, 0, 0, 0] > 0.5)
        logits = torch.stack([(~hit).float(), *[torch.zeros_like(hit, dtype=f.dtype)] * 3, hit.float()], dim=1)
        return logits + 0 * self.fc(f[:, :, 0, 0])


def test_abs_reasr_counts_only_inputs_of_other_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """REASR is the share of the clean inputs whose class is not the trigger's label that it sends there: with
    the trigger fixed, 50 of the 80 other-class inputs go to class 4 (0.625), as do the 20 of class 4 (0.7 if
    they counted)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 1, 8, 8, generator=g) * 0.9
    y = torch.arange(100) % 5
    bright = y == 4
    bright[(y != 4).nonzero().flatten()[:50]] = True
    x[:, 0, 0, 0] = torch.where(bright, 0.8, 0.2)

    def fixed(self: ABS, clf: Any, module: nn.Module, xs: torch.Tensor, channels: torch.Tensor, *_: Any) -> Any:
        mask = torch.zeros(len(channels), 1, 8, 8)
        mask[:, :, 6:, 6:] = 1.0
        return mask, torch.ones(len(channels), 1, 8, 8)

    monkeypatch.setattr(ABS, "_reverse", fixed)
    res = create("abs", seeds=(0,), **FAST["abs"]).scan(_Gate().eval(), ArrayDataset(x, y))
    assert res.score == pytest.approx(50 / 80)
    assert list(res.triggers) == [4] and res.targets == []  # below the threshold: no target named


def test_strip_cut_by_hand_and_its_false_rejection_rate() -> None:
    """The cut is the clean values' order statistic at 1-based rank frr (n + 1), interpolated: a new clean
    input falls below it with probability frr. torch.quantile's rank 1 + frr (n - 1) gives 1.8% at frr = 1%
    with n = 120 (checked here on uniform values, whose cut is its own false-rejection rate)."""
    v = torch.arange(1.0, 200.0)[torch.randperm(199, generator=torch.Generator().manual_seed(0))]
    assert float(frr_cut(v, 0.01)) == pytest.approx(2.0)  # rank 0.01 * 200 = 2
    assert float(frr_cut(v, 0.0125)) == pytest.approx(2.5)  # rank 2.5: halfway between 2 and 3
    assert float(frr_cut(v[:50], 0.01)) == float(v[:50].min())  # rank 0.51 < 1: the smallest value
    u = torch.rand(4000, 120, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rate = torch.stack([frr_cut(row, 0.01) for row in u]).mean()
    assert float(rate) == pytest.approx(0.01, abs=5e-4)
    assert float(torch.quantile(u, 0.01, dim=1).mean()) == pytest.approx(0.0181, abs=5e-4)  # the old cut
