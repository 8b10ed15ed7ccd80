"""The audit check ``certified`` on the embedded model with small parameters."""

from __future__ import annotations

import pytest

from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow
from mlsafety.core import Classifier, InputError


def _stored(rows):  # type: ignore[no-untyped-def]
    return [StoredRow("certified", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params)) for r in rows]


def test_certified_check_rows_artifacts_and_report(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    import mlsafety.audit.checks  # noqa: F401  (registers the checks)

    ctx = AuditContext(Classifier(digits_model), AuditData(digits_test, digits_test))
    check = CHECKS.create(
        "certified", sigmas=[0.25], radii=[0.0, 0.25], num_inputs=12, n0=32, n=200, attacks=["pgd"], num_attacked=2
    )
    tasks = check.tasks(ctx)  # the certification, then one task per consistency attack (resumable between them)
    assert [t.key for t in tasks] == [
        "sigma-0.25", "sigma-0.25/consistency/smoothed-pgd-l2", "sigma-0.25/consistency/pgd"
    ]  # fmt: skip
    results = [t.run() for t in tasks]
    result = results[0]
    by_key = {(r.hazard, r.metric): r for res in results for r in res.rows}
    at0 = by_key[("adversarial/any-l2/0", "certified_accuracy_sigma_0_25")]
    at25 = by_key[("adversarial/any-l2/0.25", "certified_accuracy_sigma_0_25")]
    assert at0.n == 12 and at0.ci_low <= at0.value <= at0.ci_high and at25.value <= at0.value
    assert ("adversarial/any-l2/0", "denoised_certified_accuracy_sigma_0_25") in by_key  # digits: shipped denoiser
    for attack in ("smoothed-pgd-l2", "pgd"):
        assert by_key[(f"adversarial/{attack}/certified-radius", "violation_rate_sigma_0_25")].value == 0.0
    assert result.artifacts and result.artifacts[0].data.startswith(b"\x89PNG")
    stored = _stored([r for res in results for r in res.rows])
    assert check.headlines(stored) == [] or check.headlines(stored)[0].row.metric.startswith("certified")
    tables = check.tables(stored)
    assert tables[0].headers[0] == "L2 radius" and len(tables[0].rows) == 2


def test_certified_check_rejects_bad_parameters(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    import mlsafety.audit.checks  # noqa: F401

    ctx = AuditContext(Classifier(digits_model), AuditData(digits_test, digits_test))
    with pytest.raises(InputError):
        CHECKS.create("certified", sigmas=[0.0]).tasks(ctx)
    with pytest.raises(InputError):
        CHECKS.create("certified", sigma=0.25)
