"""The ood check's monitored detector (issue 22): named by the user or chosen on held-out data, shown in
headline keys that name it, gated through the plain names; near/far groups from ``--ood near:PATH``; the
detectors skipped and why; warnings about constructed sets used on data they were not made for.

The planted model reads the class from one input axis only, and its OOD set differs from the test data on
another axis: the logits (MSP, Energy) cannot tell them apart, KNN on the head's input can.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mlsafety import zoo
from mlsafety.audit import CHECKS, AuditConfig, StoredRow, evaluate_gates, prepare_inputs
from mlsafety.audit._config import config_from_mapping
from mlsafety.audit._context import AuditContext, AuditData
from mlsafety.audit.checks.ood import halves
from mlsafety.audit.checks.ood_basic import constructed_set_rows
from mlsafety.cli import main
from mlsafety.core import ArrayDataset, Classifier, InputError
from mlsafety.metrics import auroc
from mlsafety.monitoring import ood

MODEL = """
import torch
from torch import nn


class Planted(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-10.0, 0, 0, 0], [10.0, 0, 0, 0]]))
            self.fc.bias.copy_(torch.tensor([5.0, -5.0]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def planted():
    return Planted().eval()
"""

DETECTORS = ["energy", "knn", "msp"]


def _planted_model() -> nn.Module:
    namespace: dict[str, object] = {}
    exec(MODEL, namespace)  # the same module the CLI test loads from a file
    return namespace["planted"]()  # type: ignore[operator,no-any-return]


def _planted(n: int, g: torch.Generator, shifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 1, 2, 2) in [0, 1]: the class on axis 0 (0.2 or 0.8), 0.5 elsewhere (small noise); the
    shifted (OOD) inputs move axis 1 to 0.1 or 0.9, which the head never reads."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 + 0.02 * torch.randn(n, 4, generator=g)
    x[:, 0] = torch.where(y == 1, 0.8, 0.2) + 0.02 * torch.randn(n, generator=g)
    if shifted:
        x[:, 1] = torch.where(torch.rand(n, generator=g) < 0.5, 0.1, 0.9)
        y = torch.full((n,), -1)
    return x.clamp(0, 1).view(n, 1, 2, 2).numpy(), y.numpy()


def _data(train: bool = True) -> AuditData:
    g = torch.Generator().manual_seed(0)

    def ds(n: int, name: str, shifted: bool = False) -> ArrayDataset:
        x, y = _planted(n, g, shifted)
        return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), name=name, kind="far" if shifted else "in")

    return AuditData(
        test=ds(200, "test"), val=ds(100, "val"), train=ds(200, "train") if train else None,
        ood={"shifted": ds(120, "shifted", shifted=True)},
    )  # fmt: skip


def _run(check_params: dict, data: AuditData, model: nn.Module | None = None):  # type: ignore[no-untyped-def,type-arg]
    ctx = AuditContext(Classifier(model or _planted_model()), data)
    check = CHECKS.create("ood", n_boot=20, **check_params)
    rows = [r for t in check.tasks(ctx) if t.key != "plots" for r in t.run().rows]
    stored = [StoredRow("ood", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params), r.kind)
              for r in rows]  # fmt: skip
    return check, ctx, stored


def test_a_model_whose_best_detector_is_knn_gets_a_headline_naming_it_and_a_gate_that_behaves() -> None:
    _, _, rows = _run({"detectors": DETECTORS}, _data())
    by = {(r.hazard, r.metric): r for r in rows}
    assert by[("ood", "monitored_detector")].params["detector"] == "knn"
    assert by[("ood", "monitored_detector")].params["chosen"] == "held-out"
    (headline,) = CHECKS.get("ood").headlines(rows)
    assert headline.row.key == "ood/ood/shifted/knn_auroc" and "knn" in headline.label
    assert headline.row.value > 0.95 and by[("ood/shifted", "energy_auroc")].value < 0.7  # logits cannot tell
    # the README's gate bounds the monitored detector (plain names), so it passes on this model ...
    assert by[("ood/shifted", "auroc")].params["detector"] == "knn"
    assert evaluate_gates(rows, {"ood/*/auroc": 0.9}, {}) == []
    # ... and fails when the bound is above it, or on a detector that cannot see the shift
    assert [f.key for f in evaluate_gates(rows, {"ood/*/auroc": 1.01}, {})] == [
        "ood/ood/shifted/auroc", "ood/ood-far/auroc"
    ]  # fmt: skip
    assert {f.key for f in evaluate_gates(rows, {"ood/*/energy_auroc": 0.9}, {})} == {
        "ood/ood/shifted/energy_auroc", "ood/ood-far/energy_auroc"
    }  # fmt: skip


def test_the_choice_sees_only_the_selection_halves_and_every_figure_only_the_report_halves() -> None:
    data = _data()
    check, ctx, rows = _run({"detectors": DETECTORS}, data)
    plan = check._plan
    assert plan is not None and set(plan.report) == {"ood/shifted"}  # ID side of the choice: validation data
    report = plan.report["ood/shifted"]
    select = torch.tensor(sorted(set(range(120)) - set(report.tolist())))
    assert len(select) == 60 and len(report) == 60
    # every detector's figure is its AUROC on the whole test data vs the report half, by hand
    for name in DETECTORS:
        det = ood.create(name).fit(ctx.model, data.train)
        want = float(auroc(det.score(ctx.model, data.test.x), det.score(ctx.model, data.ood["shifted"].x[report])))
        row = next(r for r in rows if r.hazard == "ood/shifted" and r.metric == f"{name}_auroc")
        assert row.value == pytest.approx(want, abs=1e-6)
        assert row.n == 200 + 60 and row.params["inputs"] == "report half"
    # the choice: validation data vs the selection half
    det = ood.create("knn").fit(ctx.model, data.train)
    want = float(auroc(det.score(ctx.model, data.val.x), det.score(ctx.model, data.ood["shifted"].x[select])))
    assert plan.selection["knn"] == pytest.approx(want, abs=1e-6)


def test_without_training_data_the_choice_takes_half_of_the_test_data_not_the_fit_data() -> None:
    check, _, rows = _run({"detectors": DETECTORS}, _data(train=False))
    plan = check._plan
    assert plan is not None and set(plan.report) == {"clean", "ood/shifted"}
    assert len(plan.report["clean"]) == 100 and plan.detector == "knn"
    assert "half of the test data" in plan.rule
    row = next(r for r in rows if r.hazard == "ood/shifted" and r.metric == "knn_auroc")
    assert row.n == 100 + 60


def test_halves_split_every_index_once() -> None:
    a, b = halves(11, torch.Generator().manual_seed(3))
    assert len(a) == 5 and len(b) == 6 and sorted(torch.cat([a, b]).tolist()) == list(range(11))


def test_a_named_detector_is_monitored_on_the_whole_sets() -> None:
    _, _, rows = _run({"detectors": DETECTORS, "default": "energy"}, _data())
    by = {(r.hazard, r.metric): r for r in rows}
    assert by[("ood/shifted", "auroc")].params["detector"] == "energy"
    assert by[("ood/shifted", "auroc")].n == 200 + 120 and "inputs" not in by[("ood/shifted", "auroc")].params
    assert by[("ood", "monitored_detector")].params["chosen"] == "named"
    (headline,) = CHECKS.get("ood").headlines(rows)
    assert headline.row.metric == "energy_auroc"
    assert evaluate_gates(rows, {"ood/*/auroc": 0.9}, {})  # the user's choice is gated, and it fails here


def test_the_users_monitor_joins_the_quick_profile_or_is_refused_with_why() -> None:
    ctx = AuditContext(Classifier(_planted_model()), _data(), quick=True)
    names = CHECKS.create("ood", quick=True, default="knn").names(ctx)
    assert "knn" in names and set(ood.DETECTORS.tagged(ood.QUICK)) <= set(names)

    class NoHead(nn.Module):  # logits from a bare product: no layer returns them, so no features
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    bare = AuditContext(Classifier(NoHead()), _data(), quick=True)
    with pytest.raises(InputError, match=r"--ood-detector knn: the detector needs the classifier's features.*--head"):
        CHECKS.create("ood", quick=True, default="knn").names(bare)
    with pytest.raises(InputError, match=r"Did you mean 'knn'"):
        CHECKS.create("ood", default="knnn").names(ctx)


def test_skipped_detectors_are_stored_with_why_and_shown() -> None:
    class NoHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[-10.0, 10.0], [0, 0], [0, 0], [0, 0]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    _, _, rows = _run({}, _data(), model=NoHead())
    skipped = {r.params["detector"]: r.params["reason"] for r in rows if r.metric.startswith("skipped_")}
    opt_in = set(ood.DETECTORS.tagged(ood.OPT_IN))  # left out of the full profile (run only when named)
    features = {n for n in ood.available() if "features" in ood.DETECTORS.get(n).needs and n not in opt_in}
    assert features <= set(skipped) and "deep-ensemble" in skipped
    assert not any(r.params.get("detector") in skipped for r in rows if r.hazard.startswith("ood/"))
    table = next(t for t in CHECKS.get("ood").tables(rows) if t.title.startswith("Detectors not run"))
    assert {r[0] for r in table.rows} == set(skipped)
    assert "every applicable detector" not in CHECKS.get("ood").description.lower()


def test_constructed_sets_warn_on_data_they_were_not_made_for() -> None:
    g = torch.Generator().manual_seed(0)
    colour = ArrayDataset(torch.rand(20, 3, 32, 32, generator=g), torch.zeros(20, dtype=torch.long), name="mine")
    letters = zoo.load_dataset("letters", shape=(3, 32, 32))
    own = ArrayDataset(letters.x, letters.y, name="letters", kind="far", description="arrays from letters.npz")
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)))
    ctx = AuditContext(model, AuditData(test=colour, val=colour, ood={"letters": letters}))
    (row,) = constructed_set_rows(ctx, "ood/letters")
    assert (row.params["made_for"], row.params["made_at"], row.params["used_at"]) == (["digits"], "1x8x8", "3x32x32")
    assert "--ood near:PATH" in row.params["message"] and row.kind == "decision"
    # a user's file of the same name is not the zoo's set; the digits data is what the letters were made for
    ctx = AuditContext(model, AuditData(test=colour, val=colour, ood={"letters": own}))
    assert constructed_set_rows(ctx, "ood/letters") == []
    digits = zoo.load_dataset("digits", "test")
    ctx = AuditContext(Classifier(zoo.load_model("digits-cnn")), AuditData(test=digits, val=digits,
                       ood={"letters": zoo.load_dataset("letters")}))  # fmt: skip
    assert constructed_set_rows(ctx, "ood/letters") == []


def test_ood_group_prefixes_and_the_ood_detector_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    for name, n, shifted in (("test", 200, False), ("shifted", 120, True), ("other", 40, True)):
        x, y = _planted(n, g, shifted)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    (tmp_path / "model.py").write_text(MODEL)
    spec = f"{tmp_path / 'model.py'}:planted"
    near, far = f"near:{tmp_path / 'shifted.npz'}", str(tmp_path / "other.npz")
    _, data = prepare_inputs(AuditConfig(model=spec, data=str(tmp_path / "test.npz"), ood=[near, far, "far:letters"]))
    assert {n: d.kind for n, d in data.ood.items()} == {"shifted": "near", "other": "far", "letters": "far"}
    cfg = config_from_mapping({"ood": [near], "ood_detector": "knn", "params": {"ood": {"n_boot": 20}}})
    assert cfg.ood == [near] and cfg.check_params["ood"] == {"n_boot": 20, "default": "knn"}
    with pytest.raises(InputError, match="unknown group 'naer'"):
        prepare_inputs(AuditConfig(model=spec, data=str(tmp_path / "test.npz"), ood=["naer:x.npz"]))

    def audit(*extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        db = tmp_path / f"runs{len(extra)}.sqlite"
        args = ["audit", "--model", spec, "--data", str(tmp_path / "test.npz"), "--ood", near, "--ood", far,
                "--check", "ood", "--db", str(db), "--report", "", "--json",
                "--fail-under", "ood/*/auroc=0.9"]  # fmt: skip
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code in (0, 1), result.output
        rows = sqlite3.connect(db).execute("SELECT hazard, metric, params_json FROM results").fetchall()
        return result.exit_code, {(h, m): json.loads(p) for h, m, p in rows}

    code, rows = audit()  # every detector: one that reads the features is chosen, and the gate passes
    monitored = rows[("ood", "monitored_detector")]
    assert code == 0 and monitored["chosen"] == "held-out" and monitored["detector"] not in ("energy", "msp")
    assert rows[("ood-near", "auroc")]["sets"] == ["shifted"] and rows[("ood-far", "auroc")]["sets"] == ["other"]
    code, rows = audit("--ood-detector", "energy")
    assert code == 1 and rows[("ood", "monitored_detector")]["chosen"] == "named"


def test_a_set_too_small_to_split_is_refused_when_the_audit_is_planned() -> None:
    data = _data()
    data.ood["shifted"] = data.ood["shifted"].subset(torch.arange(1))
    ctx = AuditContext(Classifier(_planted_model()), data)
    with pytest.raises(InputError, match=r"OOD set 'shifted' has 1 input.*--ood-detector"):
        CHECKS.create("ood", detectors=DETECTORS).tasks(ctx)
    assert CHECKS.create("ood", detectors=DETECTORS, default="knn").tasks(ctx)  # a named one needs no split


def test_defence_in_depth_says_which_default_monitors_it_could_not_try() -> None:
    class NoHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[-10.0, 10.0], [0, 0], [0, 0], [0, 0]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    ctx = AuditContext(Classifier(NoHead()), _data())
    check = CHECKS.create("defence-in-depth", adaptive=False)
    (monitor,) = [t for t in check.tasks(ctx) if t.key == "monitor"]
    rows = monitor.run().rows
    skipped = {r.hazard: r.params["reason"] for r in rows if r.metric == "monitor_skipped"}
    features = {n for n in check.params["monitors"] if "features" in ood.DETECTORS.get(n).needs}
    assert set(skipped) == {f"validation/{n}" for n in features} and all("--head" in w for w in skipped.values())
    tried = {r.hazard for r in rows if r.metric == "validation_escape"}
    assert tried and not tried & set(skipped)
    stored = [StoredRow("defence-in-depth", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params),
                        r.kind) for r in rows]  # fmt: skip
    note = next(t.note for t in CHECKS.get("defence-in-depth").tables(stored) if t.title.startswith("Monitor chosen"))
    assert "Not tried: " in note and all(n in note for n in features)


def test_named_detectors_that_cannot_act_on_the_inputs_are_refused_with_why() -> None:
    """1x2x2 inputs: no embedded denoiser was trained at that shape, so reconstruction, named by the user, is
    refused in one line before any task runs; rotation (quarter turns of a square image) runs."""
    with pytest.raises(InputError, match=r"'reconstruction' cannot run on this model: .*no embedded denoiser fits "
                       r"inputs of shape 1x2x2.*remove it from the list"):  # fmt: skip
        _run({"detectors": ["energy", "reconstruction"], "default": "energy"}, _data())
    _, _, rows = _run({"detectors": ["energy", "rotation"], "default": "energy"}, _data())
    assert {r.params.get("detector") for r in rows if r.metric.endswith("_auroc")} == {"energy", "rotation"}
    assert ood.create("rotation").unusable(_planted_model(), torch.rand(2, 1, 2, 3)) is not None
    assert ood.create("rotation").unusable(_planted_model(), torch.rand(2, 1, 2, 2)) is None


def test_each_detector_is_stored_on_both_tasks_learning_to_reject_meets_ood() -> None:
    """AURC / AUGRC of rejecting the model's mistakes and the combined risk per OOD set equal the library's
    figures computed by hand from the detectors' own scores; the report has the side-by-side table."""
    from mlsafety.monitoring.ood.reject import combined_risk
    from mlsafety.monitoring.selective import evaluate_selective

    data = _data()
    _, _, rows = _run({"detectors": ["energy", "msp"], "default": "energy", "ood_share": 0.3}, data)
    by = {(r.hazard, r.metric): r for r in rows}
    model = _planted_model()
    correct = model(data.test.x).argmax(dim=1) == data.test.y
    for name in ("energy", "msp"):
        det = ood.create(name).fit(model, data.fit)
        s_in, s_out = det.score(model, data.test.x), det.score(model, data.ood["shifted"].x)
        sel = evaluate_selective(-s_in.double(), correct, n_boot=20, seed=0)
        # (the audit's pass may batch the inputs otherwise than det.score: equal up to float rounding, which can
        # only swap exact near-ties; a wrong formula or sign moves these figures by far more than 1e-4)
        assert by[("clean", f"{name}_aurc")].value == pytest.approx(sel.metrics["aurc"].value, abs=1e-4)
        assert by[("clean", f"{name}_augrc")].value == pytest.approx(sel.metrics["augrc"].value, abs=1e-4)
        risk = by[("ood/shifted", f"{name}_combined_risk")]
        assert risk.value == pytest.approx(combined_risk(s_in, correct, s_out, ood_share=0.3), abs=1e-4)
        assert risk.ci_low <= risk.value <= risk.ci_high and risk.params["ood_share"] == 0.3
        assert CHECKS.get("ood").lower_is_better >= {f"{name}_aurc", f"{name}_combined_risk"}
    table = next(t for t in CHECKS.get("ood").tables(rows) if t.title.startswith("Learning to reject meets OOD"))
    assert {r[0] for r in table.rows} == {"energy", "msp"} and "combined risk ood/shifted" in table.headers
    with pytest.raises(InputError, match="ood_share must be a number in"):
        _run({"detectors": ["energy"], "default": "energy", "ood_share": 2}, data)
