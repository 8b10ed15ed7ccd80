"""The audit check ``corruptions`` and its hazard provider ``corruption/<name>/<severity>``."""

from __future__ import annotations

import pytest
import torch

import mlsafety.audit.checks  # noqa: F401  (registers every check)
from mlsafety.audit import CHECKS, AuditContext, AuditData
from mlsafety.core import Classifier, InputError, UnknownNameError
from mlsafety.robustness.corruptions import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, corrupt

NAMES = ["gaussian-noise", "contrast"]
SEVS = [1, 5]


def make_ctx(net, data, **params):  # type: ignore[no-untyped-def]
    check = CHECKS.create("corruptions", corruptions=NAMES, severities=SEVS, n_boot=50, **params)
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
    assert check.hazards(ctx) == [f"corruption/{n}/{s}" for n in NAMES for s in SEVS]
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
    assert by[("corruption", "mce")].value == pytest.approx(mce)
    assert by[("corruption", "relative_mce")].value == pytest.approx(mce - clean_err)
    assert by[("corruption", "mean_accuracy")].value == pytest.approx(1 - mce)
    r = by[("corruption", "mce")]
    assert r.ci_low <= r.value <= r.ci_high and r.params["normalised"] is False
    assert artifacts and artifacts[0].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_alexnet_normalised_mce(tiny_net, tiny_data):
    check, ctx = make_ctx(tiny_net, tiny_data, baseline="alexnet")
    check.params["severities"] = [1, 2, 3, 4, 5]
    rows, _ = run_all(check, ctx)
    by = {(r.hazard, r.metric): r for r in rows}
    clean_err = 1 - float((tiny_net(tiny_data.x).argmax(1) == tiny_data.y).float().mean())
    ce = {n: by[(f"corruption/{n}", "ce")].value for n in NAMES}
    want = sum(ce[n] / ALEXNET_ERRORS[n] for n in NAMES) / len(NAMES)
    want_rel = sum((ce[n] - clean_err) / (ALEXNET_ERRORS[n] - ALEXNET_CLEAN_ERROR) for n in NAMES) / len(NAMES)
    assert by[("corruption", "mce")].value == pytest.approx(want)
    assert by[("corruption", "relative_mce")].value == pytest.approx(want_rel)
    assert by[("corruption", "mce")].params["normalised"] is True
    assert by[("corruption", "mce_unnormalised")].value == pytest.approx(sum(ce.values()) / len(ce))


def test_normalised_needs_all_severities(tiny_net, tiny_data):
    check, ctx = make_ctx(tiny_net, tiny_data, baseline="alexnet")
    with pytest.raises(InputError, match="five severities"):
        run_all(check, ctx)


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


def test_jpeg_mosaic_equals_per_image_round_trips():
    import numpy as np

    from mlsafety.robustness.corruptions.digital import _jpeg, _jpeg_mosaic

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 8, 16), dtype=np.uint8)  # several mosaic rows and a padded last row
    want = np.stack([_jpeg(img, 10) for img in images])
    assert np.array_equal(_jpeg_mosaic(images, 10), want)


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
    assert [t.title for t in tables] == ["Accuracy per corruption and severity", "Corruption summary"]
    assert [row[0] for row in tables[0].rows] == NAMES
    labels = [h.label for h in type(check).headlines(stored)]
    assert "Mean accuracy under corruptions" in labels and "mCE (mean error)" in labels
