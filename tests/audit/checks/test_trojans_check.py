"""Check ``trojans`` on the embedded trojaned model: verdict, target, hazard, artifacts and tables."""

from __future__ import annotations

import pytest

from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow
from mlsafety.core import Classifier, UnknownNameError
from mlsafety.monitoring.trojans import demo_attack
from mlsafety.zoo import load_dataset, load_model

PARAMS = {
    "scanners": ["neural-cleanse", "strip", "spectral-signatures"],
    "n_seeds": 1,
    "nc_steps": 100,
    "max_clean": 200,
}


@pytest.fixture(scope="module")
def audited() -> tuple[AuditContext, list]:
    data = AuditData(
        test=load_dataset("digits", "test"), val=load_dataset("digits", "val"), train=load_dataset("digits", "train")
    )
    ctx = AuditContext(Classifier(load_model("digits-cnn-badnets")), data, seed=0, check_params={"trojans": PARAMS})
    check = CHECKS.create("trojans", **PARAMS)
    hazards = check.hazards(ctx)
    result = check.run(ctx)
    return ctx, [hazards, result]


def test_trojans_check_flags_the_demo_model(audited: tuple[AuditContext, list]) -> None:
    _ctx, (hazards, result) = audited
    rows = {(r.hazard, r.metric): r for r in result.rows}
    assert CHECKS.get("trojans").pillar == "monitoring"
    assert rows[("clean", "neural_cleanse_flagged")].value == 1.0
    assert rows[("clean", "neural_cleanse_target")].value == 7.0
    assert hazards == ["trojan/neural-cleanse-class-7"]
    hz = hazards[0]
    assert rows[(hz, "attack_success_rate")].value > 0.9
    assert rows[(hz, "attack_success_rate")].ci_low is not None
    assert rows[(hz, "strip_input_auroc")].value > 0.9
    index = [rows[("clean", f"neural_cleanse_anomaly_index_class_{k}")].value for k in range(10)]
    assert max(range(10), key=lambda k: index[k]) == 7
    assert {a.name for a in result.artifacts} == {"neural-cleanse-triggers", "neural-cleanse-anomaly-index"}
    assert all(a.data.startswith(b"\x89PNG") for a in result.artifacts)


def test_trojan_hazard_is_triggered_test_data_with_true_labels(audited: tuple[AuditContext, list]) -> None:
    ctx, (hazards, _) = audited
    data = ctx.hazard(hazards[0])
    test = ctx.data.test
    keep = test.y != 7
    assert data.y.tolist() == test.y[keep].tolist()
    assert not bool((data.x == test.x[keep]).all())
    # the recovered trigger works like the planted one on this model
    pred = ctx.outputs(hazards[0]).pred
    planted = ctx.model.logits(demo_attack().apply_trigger(test.x[keep])).argmax(dim=1)
    assert float((pred == 7).float().mean()) > 0.9 and float((planted == 7).float().mean()) > 0.9
    with pytest.raises(UnknownNameError, match="recovered"):
        ctx.hazard("trojan/neural-cleanse-class-3")


def test_trojans_tables_render(audited: tuple[AuditContext, list]) -> None:
    _, (_, result) = audited
    stored = [
        StoredRow("trojans", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params)) for r in result.rows
    ]
    tables = CHECKS.get("trojans").tables(stored)
    titles = [t.title for t in tables]
    assert titles == ["Verdicts", "Neural Cleanse per class", "Recovered triggers on the test data"]
    verdicts = {row[0]: row for row in tables[0].rows}
    assert verdicts["neural-cleanse"][3] == "TROJANED" and verdicts["neural-cleanse"][5] == "7"
    assert [h.label for h in CHECKS.get("trojans").headlines(stored)] == ["Trojan: Neural Cleanse anomaly index"]
