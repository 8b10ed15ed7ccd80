"""The monitoring checks (ood-basic, ood, calibration-basic, calibration, selective) on the embedded model."""

from __future__ import annotations

import pytest
import torch

from mlsafety import zoo
from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow, TaskResult
from mlsafety.audit import checks as _checks  # noqa: F401  (registers the checks)
from mlsafety.core import Classifier, InputError
from mlsafety.monitoring import calibration as cal
from mlsafety.monitoring import ood

MONITORING = ["ood-basic", "ood", "calibration-basic", "calibration", "selective"]
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive")


@pytest.fixture(scope="module")
def data() -> AuditData:
    sets = {n: zoo.load_dataset(n) for n in zoo.ood_names()}
    sets = {n: d.subset(torch.arange(0, len(d), 4)) for n, d in sets.items()}  # a quarter of each, for speed
    return AuditData(
        test=zoo.load_dataset("digits", "test"),
        val=zoo.load_dataset("digits", "val"),
        train=zoo.load_dataset("digits", "train"),
        ood=sets,
    )


@pytest.fixture(scope="module")
def model() -> Classifier:
    return Classifier(zoo.load_model("digits-cnn"))


def run(name: str, model: Classifier, data: AuditData, plots: bool = True, **params) -> tuple[list, list, list[str]]:  # type: ignore[no-untyped-def]
    ctx = AuditContext(model, data, seed=0, quick=True)
    check = CHECKS.create(name, quick=True, **params)
    rows, arts, keys = [], [], []
    for task in check.tasks(ctx):
        if not plots and task.key == "plots":
            continue
        result = task.run()
        assert isinstance(result, TaskResult)
        rows += result.rows
        arts += result.artifacts
        keys.append(task.key)
    return rows, arts, keys


def stored(name: str, rows: list) -> list[StoredRow]:  # type: ignore[type-arg]
    return [StoredRow(name, r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params)) for r in rows]


def _intervals_hold(rows: list) -> None:  # type: ignore[type-arg]
    for r in rows:
        if r.ci_low is not None:
            assert r.ci_low <= r.value <= r.ci_high, (r.hazard, r.metric)


@pytest.mark.parametrize("name", MONITORING)
def test_registered_in_the_monitoring_pillar(name: str) -> None:
    cls = CHECKS.get(name)
    assert cls.pillar == "monitoring" and cls.title and cls.description
    assert set(cls.quick) <= set(cls.defaults)


def test_ood_basic_rows_names_and_plots(model, data) -> None:
    rows, arts, keys = run("ood-basic", model, data, n_boot=50)
    assert keys == [f"ood/{n}" for n in data.ood] + ["plots"]
    by = {(r.hazard, r.metric): r for r in rows}
    for n in data.ood:
        for m in OOD_METRICS:
            assert (f"ood/{n}", f"msp_{m}") in by and (f"ood/{n}", f"energy_{m}") in by
            plain, msp = by[(f"ood/{n}", m)], by[(f"ood/{n}", f"msp_{m}")]
            assert (plain.value, plain.ci_low, plain.ci_high) == (msp.value, msp.ci_low, msp.ci_high)
        assert by[(f"ood/{n}", "msp_auroc")].params["detector"] == "msp"
        assert by[(f"ood/{n}", "energy_auroc")].params == {"detector": "energy", "temperature": 1.0}
    _intervals_hold(rows)
    # the stored value is the detector's AUROC on the same data
    sid = ood.create("msp").score(model, data.test.x)
    sout = ood.create("msp").score(model, data.ood["noise"].x)
    from mlsafety.metrics import auroc

    assert by[("ood/noise", "auroc")].value == pytest.approx(float(auroc(sid, sout)))
    assert arts and all(a.data.startswith(b"\x89PNG") for a in arts)
    table = CHECKS.get("ood-basic").tables(stored("ood-basic", rows))[0]
    assert {row[1] for row in table.rows} == {"msp", "energy"}
    # issue 12 point 10: both FPR@95 conventions under unambiguous names, the table says which is which
    from mlsafety.metrics import fpr95_id_positive, fpr95_ood_positive

    assert by[("ood/noise", "fpr95_id_positive")].value == pytest.approx(float(fpr95_id_positive(sid, sout)))
    assert by[("ood/noise", "fpr95_ood_positive")].value == pytest.approx(float(fpr95_ood_positive(sid, sout)))
    assert not any(r.metric.endswith("fpr_at_95_tpr") for r in rows)
    assert "ODIN" in table.note and "OpenOOD v1.5" in table.note and "fpr95_ood_positive" in table.note
    msp_cell = next(row for row in table.rows if row[1] == "msp")[3]
    assert msp_cell.count(" / ") == 2  # AUROC / FPR@95 ID+ / FPR@95 OOD+


def test_ood_check_quick_profile(model, data) -> None:
    rows, arts, keys = run("ood", model, data, n_boot=50)
    names = ood.DETECTORS.tagged(ood.QUICK)

    assert "group/near" in keys and "group/far" in keys and keys[-1] == "plots"
    by = {(r.hazard, r.metric): r for r in rows}
    for n in data.ood:
        for d in names:
            assert (f"ood/{n}", f"{d.replace('-', '_')}_auroc") in by
        # the monitored detector (chosen on held-out data) also under the plain names: ood/ood/<set>/auroc
        monitored = by[(f"ood/{n}", "auroc")].params["detector"]
        assert by[(f"ood/{n}", "auroc")].value == by[(f"ood/{n}", f"{monitored}_auroc")].value
        assert by[(f"ood/{n}", "auroc")].params["kind"] == data.ood[n].kind
    assert by[("ood", "monitored_detector")].params["detector"] == monitored
    far = by[("ood-far", "energy_auroc")]  # the report halves of the far sets, against the whole test data
    assert far.n == len(data.test) + sum(len(d) - len(d) // 2 for d in data.ood.values() if d.kind == "far")
    _intervals_hold(rows)
    assert len(arts) == 2
    tables = CHECKS.get("ood").tables(stored("ood", rows))
    ranking = tables[0]
    means = [float(r[2]) for r in ranking.rows]
    assert means == sorted(means, reverse=True)
    assert {r[1] for r in ranking.rows} == set(names)


def test_ood_check_mixes_shared_and_own_pass_detectors(model, data) -> None:
    from mlsafety.metrics import auroc

    # a named monitored detector: no selection half, every figure on the whole sets
    rows, _, _ = run("ood", model, data, plots=False, n_boot=20, detectors=["odin", "msp", "energy"], default="msp")
    by = {(r.hazard, r.metric): r.value for r in rows}
    for name in ("msp", "odin"):
        det = ood.create(name)
        want = float(auroc(det.score(model, data.test.x), det.score(model, data.ood["letters"].x)))
        assert by[("ood/letters", f"{name}_auroc")] == pytest.approx(want)


class _NoHead(torch.nn.Module):
    """Logits from a bare matrix product: no layer returns them, so no head (and no features) is found."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_ood_check_on_a_model_without_head(data) -> None:
    conv = Classifier(_NoHead().eval())
    assert conv.head is None
    ctx = AuditContext(conv, data, quick=True)
    assert CHECKS.create("ood", quick=True).names(ctx) == ["energy", "max-logit", "msp"]  # tag "quick", sorted
    assert not any("features" in ood.DETECTORS.get(n).needs for n in CHECKS.create("ood").names(ctx))
    rows, _, _ = run("ood", conv, data, plots=False, n_boot=20)
    measured = [r for r in rows if r.hazard != "ood"]
    assert {r.params["detector"] for r in measured} == {"msp", "max-logit", "energy"}
    skipped = {r.params["detector"]: r.params["reason"] for r in rows if r.metric.startswith("skipped_")}
    quick_features = {n for n in ood.DETECTORS.tagged(ood.QUICK) if "features" in ood.DETECTORS.get(n).needs}
    assert set(skipped) == quick_features and all("--head" in why for why in skipped.values())


def test_ood_check_all_applicable_detectors(model, data) -> None:
    check = CHECKS.create("ood")
    ctx = AuditContext(model, data)
    names = check.names(ctx)
    assert "deep-ensemble" not in names and {"mc-dropout", "odin", "vim", "gradnorm"} <= set(names)


def test_ood_check_full_profile_runs_every_detector(model, data) -> None:
    """The default (non-quick) profile: every applicable detector, hyper-parameters kept in params."""
    check = CHECKS.create("ood", n_boot=20)
    ctx = AuditContext(model, data)
    rows = [r for t in check.tasks(ctx) if t.key != "plots" for r in t.run().rows]
    detectors = {r.params["detector"] for r in rows if r.hazard != "ood"}
    assert detectors == set(check.names(ctx))
    assert any("seed" in r.params for r in rows)  # a detector whose own hyper-parameters include a seed
    _intervals_hold(rows)


def test_ood_check_refuses_unknown_detectors(model, data) -> None:
    ctx = AuditContext(model, data)
    with pytest.raises(InputError, match="unknown detector"):
        CHECKS.create("ood", detectors=["msp", "energie"], default="msp").names(ctx)
    with pytest.raises(InputError, match="default detector"):
        CHECKS.create("ood", detectors=["msp"], default="energy").names(ctx)


def test_temperature_msp_is_fitted_on_the_validation_data_when_detectors_fit_on_training_data(model, data) -> None:
    # Guo et al. fit T on held-out data; on the training data the model has memorised it comes out too sharp
    rows, _, _ = run("ood", model, data, plots=False, n_boot=20, detectors=["msp", "temperature-msp", "energy"])
    ctx = AuditContext(model, data)
    want = cal.TemperatureScaler().fit(ctx.outputs_for(data.val).logits, data.val.y).temperature_
    on_train = cal.TemperatureScaler().fit(ctx.outputs_for(data.train).logits, data.train.y).temperature_
    assert abs(want - on_train) > 0.05
    det = ood.create("temperature-msp", temperature=want)
    x = data.ood["letters"].x
    scores = det.fit(model, data.val).score(model, x)
    mine = [r for r in rows if r.params.get("detector") == "temperature-msp"]
    assert mine and all(r.params["fitted_on"] == "held-out data" for r in mine)
    assert not any("fitted_on" in r.params for r in rows if r.params.get("detector") in ("msp", "energy"))
    from mlsafety.audit.checks._common import ScoreCache

    cache = ScoreCache(ctx, ["msp", "temperature-msp"])
    torch.testing.assert_close(cache.scores("ood/letters")["temperature-msp"], scores.cpu())
    monitored = next(r for r in rows if r.metric == "monitored_detector")
    assert "temperature-msp on the validation data" in monitored.params["rule"]


def test_parameters_of_a_detector_the_profile_leaves_out_are_not_refused(model, data) -> None:
    # a config that sets odin's temperature for the full profile stays valid under --quick, whose profile does not
    # run odin (it was refused as 'a detector not run'); its values are still checked, a name that is no detector
    # is refused, and so is an opt-in detector the profile never runs unless listed
    quick = AuditContext(model, data, quick=True)
    check = CHECKS.create("ood", quick=True, params={"odin": {"temperature": 10.0}})
    assert "odin" not in check.names(quick)
    assert next(t.key for t in check.tasks(quick)) == "detectors"
    with pytest.raises(InputError, match="odin temperature must be > 0"):
        CHECKS.create("ood", quick=True, params={"odin": {"temperature": -1.0}}).tasks(quick)
    with pytest.raises(InputError, match="'odn'"):
        CHECKS.create("ood", quick=True, params={"odn": {}}).tasks(quick)
    with pytest.raises(InputError, match="parameters are given for 'gram'"):
        CHECKS.create("ood", params={"gram": {}}).tasks(AuditContext(model, data))


def test_ood_tuning_without_training_data_is_refused_when_planned(model, data) -> None:
    # detectors are fitted on the validation data then, and tuning chooses on it: refused by ood.tune inside a
    # task before, after the run was stored
    no_train = AuditData(test=data.test, val=data.val, ood=data.ood)
    for key in ("tune", "tune_on_ood"):
        with pytest.raises(InputError, match="give training data"):
            CHECKS.create("ood", detectors=["energy", "react"], **{key: True}).tasks(AuditContext(model, no_train))


def test_ood_tuning_is_marked(model, data) -> None:
    rows, _, _ = run("ood", model, data, plots=False, n_boot=20, detectors=["energy", "react"], tune=True)
    react = [r for r in rows if r.params.get("detector") == "react" and r.hazard != "ood"]  # not the monitor's row
    assert react and all(r.params["tuned_on"] == "synthetic" and "percentile" in r.params for r in react)
    energy = [r for r in rows if r.params.get("detector") == "energy"]
    assert all("tuned_on" not in r.params for r in energy)
    rows, _, _ = run("ood", model, data, plots=False, n_boot=20, detectors=["energy", "react"], tune_on_ood=True)
    assert {r.params["tuned_on"] for r in rows if r.params.get("detector") == "react" and r.hazard != "ood"} == {"ood"}
    table = CHECKS.get("ood").tables(stored("ood", rows))[0]
    assert any(row[-1].endswith("(tuned on ood outliers)") for row in table.rows)
    assert any(row[-1] == "temperature=1.0 (paper defaults)" for row in table.rows)


def test_calibration_basic(model, data) -> None:
    rows, arts, _ = run("calibration-basic", model, data, n_boot=50)
    by = {r.metric: r for r in rows}
    assert set(by) == {"ece", "brier", "nll"}
    probs = model.logits(data.test.x).detach().softmax(1)
    assert by["ece"].value == pytest.approx(cal.ece(probs, data.test.y), abs=1e-6)
    assert by["nll"].value == pytest.approx(cal.nll(probs, data.test.y), abs=1e-6)
    _intervals_hold(rows)
    assert arts[0].data.startswith(b"\x89PNG")


def test_calibration_before_and_after(model, data) -> None:
    rows, arts, _ = run("calibration", model, data, n_boot=50, calibrators=["temperature", "vector"])
    assert len(arts) == 1 and arts[0].data.startswith(b"\x89PNG")
    by = {r.metric: r for r in rows}
    for m in ("ece", "adaptive_ece", "mce", "rms_calibration_error", "classwise_ece", "brier", "nll"):
        assert {m, f"{m}_after_ts", f"{m}_after_vs"} <= set(by)
    val_logits = model.logits(data.val.x).detach()
    t = cal.TemperatureScaler().fit(val_logits, data.val.y).temperature_
    assert by["temperature"].value == pytest.approx(t)
    after = (model.logits(data.test.x).detach().double() / t).softmax(1)
    assert by["ece_after_ts"].value == pytest.approx(cal.ece(after, data.test.y), abs=1e-6)
    _intervals_hold(rows)
    table = CHECKS.get("calibration").tables(stored("calibration", rows))[0]
    assert len(table.headers) == 4


def test_selective(model, data) -> None:
    rows, arts, _ = run("selective", model, data, n_boot=50)
    by = {r.metric: r for r in rows}
    from mlsafety.monitoring import selective as sel

    logits = model.logits(data.test.x).detach()
    correct = logits.argmax(1) == data.test.y
    conf = logits.softmax(1).max(1).values
    assert by["aurc"].value == pytest.approx(float(sel.aurc(conf, correct)), rel=1e-5)
    assert by["energy_aurc"].params["detector"] == "energy"
    assert by["risk_at_coverage"].params["coverage"] == 0.9
    _intervals_hold(rows)
    assert arts[0].data.startswith(b"\x89PNG")


def test_checks_are_deterministic(model, data) -> None:
    a, _, _ = run("ood-basic", model, data, plots=False, n_boot=30)
    b, _, _ = run("ood-basic", model, data, plots=False, n_boot=30)
    assert [(r.metric, r.value, r.ci_low, r.ci_high) for r in a] == [
        (r.metric, r.value, r.ci_low, r.ci_high) for r in b
    ]
