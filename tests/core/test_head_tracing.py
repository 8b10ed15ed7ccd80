"""Issue 22: the head is found by tracing which layer returns the logits, not by registration order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import Classifier, InputError, forward, generator
from mlsafety.monitoring import ood


def _seeded(cls: type[nn.Module], *args: object) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(*args).eval()


class ClassifierFirst(nn.Module):
    """Registers its classifier before every other Linear; three Linear layers follow the features."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(8, 3)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(256, 16)
        self.fc2 = nn.Linear(16, 8)
        self.aux = nn.Linear(8, 5)  # registered last and run last: an auxiliary projection, not the head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc2(F.relu(self.fc1(F.relu(self.conv(x)).flatten(1)))))
        return self.classifier(h), self.aux(h)


class ConvHead(nn.Module):
    """A 1x1 convolution head followed by global average pooling (modules: pool + flatten)."""

    def __init__(self, functional: bool = False, max_pool: bool = False) -> None:
        super().__init__()
        self.functional, self.max_pool = functional, max_pool
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def body_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.body_map(x))
        if self.max_pool:
            return z.amax(dim=(2, 3))
        if self.functional:
            return F.adaptive_avg_pool2d(z, 1).flatten(1)
        return self.flat(self.pool(z))


class GeMNet(nn.Module):
    """A Linear head after a non-linear (generalised mean) pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x)).clamp_min(1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))


def _x(n: int, c: int = 3, seed: str = "x") -> torch.Tensor:
    return torch.rand(n, c, 8, 8, generator=generator(0, "head-tracing", seed))


def test_classifier_registered_first_is_found_and_its_input_is_the_features():
    model = _seeded(ClassifierFirst)
    x = _x(10, 1)
    clf = Classifier(model)
    feats, logits = clf.features_and_logits(x)
    assert clf.head is model.classifier and clf.head_name == "classifier"
    assert clf.head_info is not None and clf.head_info.how == "traced" and clf.head_info.feature_dim == 8
    assert clf.num_classes == 3
    h = F.relu(model.fc2(F.relu(model.fc1(F.relu(model.conv(x)).flatten(1)))))
    torch.testing.assert_close(feats, h)
    torch.testing.assert_close(logits, model(x)[0])
    torch.testing.assert_close(feats @ clf.head_weight.T + clf.head_bias, logits)


def test_several_linear_layers_after_the_features_the_last_one_is_the_head():
    model = _seeded(
        lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
        )
    )
    clf = Classifier(model)
    out = forward(clf, _x(7, 1))
    assert clf.head_name == "5" and out.features is not None and out.features.shape == (7, 16)


@pytest.mark.parametrize("functional", [False, True], ids=["pool-module", "functional-pool"])
def test_conv_head_features_are_the_spatial_mean_of_its_input(functional):
    model = _seeded(ConvHead, functional)
    x = _x(9)
    clf = Classifier(model)
    out = forward(clf, x)
    info = clf.head_info
    assert clf.head is model.head and info is not None
    assert info.how == "traced-upstream" and info.pooled and info.affine and info.feature_dim == 6
    torch.testing.assert_close(out.features, model.body_map(x).mean(dim=(2, 3)))  # never the 6*8*8 map
    assert clf.head_weight.shape == (4, 6)
    torch.testing.assert_close(out.features @ clf.head_weight.T + clf.head_bias, out.logits, atol=1e-5, rtol=1e-4)
    assert "head" in info.describe() and "mean-pooled" in info.describe()


def test_linear_after_non_linear_pooling():
    model = _seeded(GeMNet)
    x = _x(6)
    out = forward(Classifier(model), x)
    torch.testing.assert_close(out.features, model.pooled(x))


def test_conv_head_with_max_pooling_refuses_head_weights():
    clf = Classifier(_seeded(ConvHead, False, True))
    forward(clf, _x(4))
    assert clf.head_name == "head" and clf.head_info is not None and not clf.head_info.affine
    with pytest.raises(InputError, match="not W f \\+ b"):
        _ = clf.head_weight


def test_named_head_pools_a_conv_map_instead_of_flattening_it():
    model = _seeded(ConvHead)
    clf = Classifier(model, head="head")
    feats, _ = clf.features_and_logits(_x(3))
    assert feats.shape == (3, 6) and clf.head_info is not None and clf.head_info.how == "named"
    with pytest.raises(InputError, match=r"no submodule named .nope.*body, head\)"):
        Classifier(model, head="nope")


def test_trace_restores_modes_and_removes_hooks_after_an_exception():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.fc(x)
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        Classifier(model).trace(torch.rand(2, 4))
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim", "react"])
def test_feature_detectors_run_on_a_conv_head_model(name):
    """The feature-based detectors fit and score on a conv-head model; ReAct with nothing clipped is Energy."""
    model = _seeded(ConvHead)
    g = generator(0, "conv-head-data")
    x_in = torch.rand(60, 3, 8, 8, generator=g) * 0.5
    y_in = forward(model, x_in).pred.cpu()
    x_out = torch.rand(20, 3, 8, 8, generator=g)
    params = {"k": 5} if name == "knn" else {}
    det = ood.create(name, **params).fit(model, (x_in, y_in))
    scores = det.score(model, x_out)
    assert scores.shape == (20,) and bool(torch.isfinite(scores).all())
    if name == "react":
        det.threshold_ = float("inf")
        energy = ood.create("energy").score(model, x_out)
        torch.testing.assert_close(det.score(model, x_out), energy, atol=1e-5, rtol=1e-4)


def test_detectors_that_need_head_weights_are_tagged_so_and_only_they_fail_without_an_affine_head():
    """On a conv head followed by max pooling, exactly the detectors tagged needs-head-weights refuse."""
    model = _seeded(ConvHead, False, True)
    clf = Classifier(model)
    g = generator(0, "max-pool-data")
    x_in = torch.rand(40, 3, 8, 8, generator=g)
    y_in = forward(clf, x_in).pred.cpu()
    assert not clf.head_is_affine
    refused, tried = set(), set()
    for name in ood.available():
        det = ood.DETECTORS.get(name)
        tags = ood.DETECTORS.tags(name)
        # the shared-pass detectors, and the tagged ones that take the model (e.g. AdaSCALE's input gradient)
        shared = det.needs <= ood.SHARED_NEEDS
        if ood.IMAGE not in tags or not (shared or ood.NEEDS_HEAD_WEIGHTS in tags):
            continue
        tried.add(name)
        try:
            ood.create(name).fit(clf, (x_in, y_in)).score(clf, x_in[:5])
        except InputError as exc:
            assert "W f + b" in str(exc), (name, exc)
            refused.add(name)
    assert refused == set(ood.DETECTORS.tagged(ood.NEEDS_HEAD_WEIGHTS)) & tried and {"react", "vim"} <= refused
    assert set(ood.DETECTORS.tagged(ood.NEEDS_HEAD_WEIGHTS)) <= tried


def test_no_traceable_head_gives_logits_without_features():
    """A 3x3 convolution head with pooling is no Linear / 1x1 head: logit detectors run, feature ones refuse."""
    model = _seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    clf = Classifier(model)
    x = _x(6)
    out = forward(clf, x)
    assert out.features is None and clf.head is None and clf.head_info is not None and clf.head_info.how == "none"
    assert "none found" in clf.head_info.describe()
    assert ood.create("energy").fit(clf, (x, out.pred.cpu())).score(clf, x).shape == (6,)
    with pytest.raises(InputError, match="features"):
        ood.create("mahalanobis").fit(clf, (x, out.pred.cpu()))


def test_cli_head_option_names_the_head_and_a_wrong_name_is_one_line(tmp_path):
    import json
    import sqlite3

    import numpy as np
    from click.testing import CliRunner

    from mlsafety.cli import main

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.random((40, 3, 8, 8)).astype("float32"), y=g.integers(0, 4, 40))
    base = ["audit", "--model", f"{tmp_path}/m.py:make", "--data", str(tmp_path / "d.npz"), "--check", "clean",
            "--db", str(tmp_path / "runs.sqlite"), "--report", str(tmp_path / "r.html")]  # fmt: skip
    bad = CliRunner().invoke(main, [*base, "--head", "nope"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "--head nope" in lines[0] and "0, 2" in lines[0], bad.output
    ok = CliRunner().invoke(main, [*base, "--head", "2"])
    assert ok.exit_code == 0, ok.output
    assert "Head (features layer): 2 (Conv2d, 6 features, spatially mean-pooled; named by head=)" in ok.output
    (record,) = sqlite3.connect(tmp_path / "runs.sqlite").execute("select config_json from runs").fetchone()
    (head,) = [n for n in json.loads(record)["notes"] if n["kind"] == "head"]
    assert head["how"] == "named" and head["feature_dim"] == 6
