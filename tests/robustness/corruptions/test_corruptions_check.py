"""The audit check ``corruptions`` and its hazard provider ``corruption/<name>/<severity>``."""

from __future__ import annotations

import pytest
import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow
from mlsafety.core import Classifier, InputError, UnknownNameError
from mlsafety.metrics import bootstrap_mean
from mlsafety.robustness.corruptions import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, corrupt

NAMES = ["gaussian-noise", "contrast"]
SEVS = [1, 5]


def make_ctx(net, data, **params):  # type: ignore[no-untyped-def]
    params.setdefault("severities", SEVS)
    check = CHECKS.create("corruptions", corruptions=NAMES, n_boot=50, **params)
    ctx = AuditContext(Classifier(net), AuditData(test=data, val=data), seed=3)
    ctx.check_params = {"corruptions": check.params}
    ctx.planned_hazards = check.hazards(ctx)
    return check, ctx


def run_all(check, ctx):  # type: ignore[no-untyped-def]
    rows, artifacts = [], []
    for task in check.tasks(ctx):
        res = task.run()
        rows += res.rows
        artifacts += res.artifacts
    return rows, artifacts


def test_hazards_and_rows_match_direct_computation(tiny_net, tiny_data):
    check, ctx = make_ctx(tiny_net, tiny_data)
    assert [str(h) for h in check.hazards(ctx)] == [f"corruption/{n}/{s}" for n in NAMES for s in SEVS]
    rows, artifacts = run_all(check, ctx)
    by = {(r.hazard, r.metric): r for r in rows}
    errors = {}
    for n in NAMES:
        for s in SEVS:
            x = corrupt(tiny_data.x, n, s, generator=ctx.generator("corruption", n, s))
            correct = (tiny_net(x).argmax(1) == tiny_data.y).float()
            acc = by[(f"corruption/{n}/{s}", "accuracy")]
            assert acc.value == pytest.approx(float(correct.mean()))
            assert acc.ci_low <= acc.value <= acc.ci_high and acc.n == len(tiny_data)
            assert by[(f"corruption/{n}/{s}", "corruption_error")].value == pytest.approx(1 - float(correct.mean()))
            errors.setdefault(n, []).append(1 - float(correct.mean()))
        assert by[(f"corruption/{n}", "ce")].value == pytest.approx(sum(errors[n]) / len(SEVS))
    clean_err = 1 - float((tiny_net(tiny_data.x).argmax(1) == tiny_data.y).float().mean())
    mce = sum(sum(e) / len(e) for e in errors.values()) / len(errors)
    assert by[("corruption", "mce")].value == pytest.approx(mce, abs=1e-6)  # the test's errors are float32
    assert by[("corruption", "relative_mce")].value == pytest.approx(mce - clean_err, abs=1e-6)
    assert by[("corruption", "mean_accuracy")].value == pytest.approx(1 - mce, abs=1e-6)
    r = by[("corruption", "mce")]
    assert r.ci_low <= r.value <= r.ci_high and r.params["normalised"] is False
    assert artifacts and artifacts[0].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_alexnet_normalised_mce(tiny_net, tiny_data):
    check, ctx = make_ctx(tiny_net, tiny_data, baseline="alexnet", severities=[1, 2, 3, 4, 5])
    rows, _ = run_all(check, ctx)
    by = {(r.hazard, r.metric): r for r in rows}
    clean_err = 1 - float((tiny_net(tiny_data.x).argmax(1) == tiny_data.y).float().mean())
    ce = {n: by[(f"corruption/{n}", "ce")].value for n in NAMES}
    want = sum(ce[n] / ALEXNET_ERRORS[n] for n in NAMES) / len(NAMES)
    want_rel = sum((ce[n] - clean_err) / (ALEXNET_ERRORS[n] - ALEXNET_CLEAN_ERROR) for n in NAMES) / len(NAMES)
    assert by[("corruption", "mce")].value == pytest.approx(want, abs=1e-6)
    assert by[("corruption", "relative_mce")].value == pytest.approx(want_rel, abs=1e-6)
    assert by[("corruption", "mce")].params["normalised"] is True
    assert by[("corruption", "mce_unnormalised")].value == pytest.approx(sum(ce.values()) / len(ce))


def test_normalised_needs_all_severities(tiny_net, tiny_data):
    with pytest.raises(InputError, match="five severities"):  # refused when the audit is planned
        make_ctx(tiny_net, tiny_data, baseline="alexnet")


def test_hazard_provider_is_deterministic_and_validates(tiny_net, tiny_data):
    _, ctx = make_ctx(tiny_net, tiny_data)
    a = ctx.hazard("corruption/fog/2").x
    _, ctx2 = make_ctx(tiny_net, tiny_data)
    assert torch.equal(a, ctx2.hazard("corruption/fog/2").x)
    assert not torch.equal(a, tiny_data.x)
    for bad in ("corruption/fog", "corruption/fog/6", "corruption/fgo/1"):
        with pytest.raises(UnknownNameError):
            ctx.hazard(bad)


def test_bad_parameters(tiny_net, tiny_data):
    with pytest.raises(UnknownNameError):
        make_ctx(tiny_net, tiny_data)[0].__class__(corruptions=["nope"]).hazards(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="severities"):
        CHECKS.create("corruptions", severities=[0]).hazards(None)  # type: ignore[arg-type]


def test_quick_profile_is_a_subset():
    quick = CHECKS.create("corruptions", quick=True)
    full = CHECKS.create("corruptions")
    assert set(quick.hazards(None)) < set(full.hazards(None))  # type: ignore[arg-type]
    assert len(full.hazards(None)) == 19 * 5  # type: ignore[arg-type]


def test_report_tables_and_headlines(tiny_net, tiny_data):
    from mlsafety.audit import StoredRow

    check, ctx = make_ctx(tiny_net, tiny_data)
    rows, _ = run_all(check, ctx)
    stored = [
        StoredRow("corruptions", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params)) for r in rows
    ]
    tables = type(check).tables(stored)
    assert [t.title for t in tables] == [
        "Accuracy per corruption and severity",
        "Corruption error per corruption",
        "Corruption summary",
    ]
    assert [row[0] for row in tables[0].rows] == NAMES
    labels = [h.label for h in type(check).headlines(stored)]
    assert "Mean accuracy under corruptions" in labels and "mCE (mean error)" in labels


# -- not applicable (issue 12 point 7) ------------------------------------------------------------------
def test_not_applicable_hazards_are_decisions_never_counted(tiny_net, tiny_data):
    """Grey 8-pixel images: saturate has nothing to change; under ImageNet-C's parameters shrunk to 8 px
    defocus-blur is a sub-pixel disk at every severity and motion-blur at severity 1. None is run, each
    gets a decision row saying why, and none enters CE or mCE (formerly they counted as survived)."""
    names = ["saturate", "defocus-blur", "motion-blur", "contrast"]
    check = CHECKS.create("corruptions", corruptions=names, severities=[1, 5], n_boot=50, table="imagenet-c")
    ctx = AuditContext(Classifier(tiny_net), AuditData(test=tiny_data, val=tiny_data), seed=3)
    ctx.check_params = {"corruptions": check.params}
    planned = [str(h) for h in check.hazards(ctx)]
    assert planned == ["corruption/motion-blur/5", "corruption/contrast/1", "corruption/contrast/5"]
    rows, _ = run_all(check, ctx)
    by = {(r.hazard, r.metric): r for r in rows}
    for hz in ("saturate/1", "saturate/5", "defocus-blur/1", "defocus-blur/5", "motion-blur/1"):
        r = by[(f"corruption/{hz}", "not_applicable")]
        assert r.kind == "decision" and r.ci_low is None and r.params["reason"]
        assert (f"corruption/{hz}", "accuracy") not in by
    assert "no saturation" in by[("corruption/saturate/1", "not_applicable")].params["reason"]
    assert "half an 8-bit level" in by[("corruption/defocus-blur/1", "not_applicable")].params["reason"]
    assert by[("corruption/motion-blur/5", "accuracy")].kind == "estimate"  # the applicable severity is measured
    for name in ("saturate", "defocus-blur", "motion-blur"):  # partly or wholly inapplicable: no CE
        assert (f"corruption/{name}", "ce") not in by and by[
            (f"corruption/{name}", "ce_not_applicable")
        ].kind == "decision"
    mce = by[("corruption", "mce")]
    assert mce.params["corruptions"] == ["contrast"]
    assert mce.params["excluded_not_applicable"] == ["defocus-blur", "motion-blur", "saturate"]
    assert mce.value == pytest.approx(by[("corruption/contrast", "ce")].value)
    with pytest.raises(InputError, match="not applicable"):
        ctx.hazard("corruption/saturate/1")
    stored = [StoredRow("corruptions", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params), r.kind)
              for r in rows]  # fmt: skip
    tables = {t.title: t for t in type(check).tables(stored)}
    grid = {row[0]: row for row in tables["Accuracy per corruption and severity"].rows}
    assert grid["saturate"][1:] == ["n/a", "n/a", "n/a"] and grid["motion-blur"][1] == "n/a"
    skipped = tables["Not applicable to these images (not run, not counted in CE or mCE)"].rows
    assert {(r[0], r[1]) for r in skipped} == {("saturate", "1"), ("saturate", "5"), ("defocus-blur", "1"),
                                               ("defocus-blur", "5"), ("motion-blur", "1")}  # fmt: skip


def test_default_tables_make_every_corruption_applicable_to_small_images(tiny_net, tiny_data):
    """The former silent no-ops at 8 px (defocus and Gaussian blur at every severity, motion blur at 1) now
    corrupt with CIFAR-10-C's parameters and are measured."""
    check = CHECKS.create("corruptions", corruptions=["defocus-blur", "gaussian-blur", "motion-blur"], n_boot=20)
    ctx = AuditContext(Classifier(tiny_net), AuditData(test=tiny_data, val=tiny_data), seed=0)
    ctx.check_params = {"corruptions": check.params}
    assert len(check.hazards(ctx)) == 15
    for hz in check.hazards(ctx):
        assert not torch.equal(ctx.hazard(hz).x, tiny_data.x), hz
    rows, _ = run_all(check, ctx)
    assert {r.params["table"] for r in rows if "table" in r.params} == {"cifar-10-c"}
    assert not any(r.kind == "decision" for r in rows)
    _, artifacts = run_all(check, ctx)
    assert "cifar-10-c table, its pixel lengths times 1 for 8 x 8" in artifacts[0].caption  # not shrunk below 32 px


def test_everything_is_not_applicable_gives_one_decision(tiny_net, tiny_data):
    check = CHECKS.create("corruptions", corruptions=["saturate"], n_boot=20)
    ctx = AuditContext(Classifier(tiny_net), AuditData(test=tiny_data, val=tiny_data), seed=0)
    ctx.check_params = {"corruptions": check.params}
    assert check.hazards(ctx) == []
    rows, artifacts = run_all(check, ctx)
    assert {r.kind for r in rows} == {"decision"} and not artifacts
    assert any(r.hazard == "corruption" and r.metric == "mce_not_applicable" for r in rows)


def test_bad_table_and_reference_size(tiny_net, tiny_data):
    for params in ({"table": "cifar-100-c"}, {"reference_size": 0}, {"reference_size": "big"}):
        with pytest.raises(InputError, match=r"table|reference_size"):
            CHECKS.create("corruptions", **params).hazards(None)  # type: ignore[arg-type]


# -- intervals and kinds (issue 12 point 11) -------------------------------------------------------------
def test_every_row_is_an_estimate_with_its_interval_or_a_decision(tiny_net, tiny_data):
    check, ctx = make_ctx(tiny_net, tiny_data)
    check.params["corruptions"] = ["gaussian-noise", "saturate", "contrast"]
    rows, _ = run_all(check, ctx)
    assert {r.kind for r in rows} == {"estimate", "decision"}
    for r in rows:
        if r.kind == "estimate":
            assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.value <= r.ci_high, r
            assert r.n == len(tiny_data)
        else:
            assert r.ci_low is None and r.ci_high is None and r.params["reason"]


def test_ce_is_the_pooled_error_with_an_input_bootstrap_interval(tiny_net, tiny_data):
    """CE pools each input's errors over the severities; the N x S outcomes share inputs, so the interval
    resamples inputs (with all their severities) rather than treating N x S trials as independent."""
    check, ctx = make_ctx(tiny_net, tiny_data)
    rows, _ = run_all(check, ctx)
    by = {(r.hazard, r.metric): r for r in rows}
    for name in NAMES:
        wrong = torch.stack(
            [(ctx.outputs(f"corruption/{name}/{s}").pred != tiny_data.y).double() for s in SEVS], dim=1
        ).mean(dim=1)
        want = bootstrap_mean(wrong, n_boot=50, seed=ctx.seed_for("corruptions", name, "ce"), name=f"{name}-ce")
        got = by[(f"corruption/{name}", "ce")]
        assert (got.value, got.ci_low, got.ci_high, got.n) == pytest.approx(tuple(want))
        assert got.ci_low < got.value < got.ci_high


# -- seeds (issue 12 point 8) ----------------------------------------------------------------------------
def test_streams_are_derived_from_seed_check_and_task_never_the_raw_seed(tiny_net, tiny_data, monkeypatch):
    from mlsafety.robustness.corruptions import evaluate  # the pillar's estimates the check calls

    seen = []
    for fn in ("bootstrap_mean", "bootstrap_statistic"):
        real = getattr(evaluate, fn)

        def spy(*args, _real=real, _fn=fn, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((_fn, kwargs.get("seed")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(evaluate, fn, spy)
    check, ctx = make_ctx(tiny_net, tiny_data)
    run_all(check, ctx)
    assert {fn for fn, _ in seen} == {"bootstrap_mean", "bootstrap_statistic"}
    seeds = [seed for _, seed in seen]
    assert ctx.seed not in seeds and None not in seeds, "the raw run seed (or a default) reached a bootstrap"
    assert len(set(seeds)) == len(seeds), "two tasks share a random stream"
    assert ctx.seed_for("corruptions", "gaussian-noise", "ce") in seeds


def test_rows_do_not_depend_on_other_work_in_the_context(tiny_net, tiny_data):
    """The same rows after the global generator moved, other hazards were made first, the corruption
    hazards were asked for in reverse order and the tasks ran in reverse order (as with other checks)."""
    check, ctx = make_ctx(tiny_net, tiny_data)
    alone, _ = run_all(check, ctx)
    check2, busy = make_ctx(tiny_net, tiny_data)
    torch.manual_seed(1234)
    torch.rand(100)
    busy.outputs("clean")
    torch.rand(5, generator=busy.generator("other-check", "task"))
    for hz in reversed(check2.hazards(busy)):
        busy.outputs(hz)
    rows = []
    for task in reversed(check2.tasks(busy)):
        rows += task.run().rows
    assert sorted(rows, key=repr) == sorted(alone, key=repr)
    _, other_seed = make_ctx(tiny_net, tiny_data)
    other_seed.seed = 4
    assert not torch.equal(
        other_seed.hazard("corruption/gaussian-noise/1").x, ctx.hazard("corruption/gaussian-noise/1").x
    )
