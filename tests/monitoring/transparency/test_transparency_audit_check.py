"""The audit check ``transparency`` on the embedded model with small parameters."""

from __future__ import annotations

from mlsafety.audit import CHECKS, AuditContext, AuditData, StoredRow
from mlsafety.core import Classifier


def _run_tasks(check, ctx):  # type: ignore[no-untyped-def]
    """Every task of the check (sanity, examples, visualisations) run as the engine runs them, as one result."""
    from mlsafety.audit import TaskResult

    out = TaskResult()
    for r in check.run_tasks(ctx):
        out.rows += r.rows
        out.artifacts += r.artifacts
    return out


def test_transparency_check_rows_artifacts_and_tables(digits_model, digits_test) -> None:  # type: ignore[no-untyped-def]
    import mlsafety.audit.checks  # noqa: F401  (registers the checks)
    from mlsafety import zoo

    data = AuditData(digits_test, digits_test, ood={"noise": zoo.load_dataset("noise")})
    ctx = AuditContext(Classifier(digits_model), data)
    check = CHECKS.create(
        "transparency",
        methods=["saliency", "input-x-gradient"],
        grid_methods=["saliency"],
        examples=2,
        sanity_inputs=6,
        sanity_modes=["cascading"],
        vis_steps=10,
    )
    result = _run_tasks(check, ctx)
    rows = {r.metric: r for r in result.rows}
    # The gradient depends on the weights; input x gradient is dominated by the input (Adebayo et al.).
    assert rows["saliency_cascading_pass"].value == 1.0
    assert rows["input_x_gradient_cascading_pass"].value == 0.0
    assert rows["sanity_pass_share"].value == 0.5
    assert rows["ig_completeness_gap"].value >= 0
    names = {a.name for a in result.artifacts}
    assert {
        "sanity-checks",
        "attributions-correct",
        "attributions-adversarial",
        "attributions-ood-noise",
        "class-visualisations",
    } <= names
    assert all(a.data.startswith(b"\x89PNG") for a in result.artifacts)
    stored = [
        StoredRow("transparency", r.hazard, r.metric, r.value, r.ci_low, r.ci_high, r.n, dict(r.params))
        for r in result.rows
    ]
    tables = check.tables(stored)
    assert [row[0] for row in tables[0].rows] == ["saliency", "input-x-gradient"]
    assert check.headlines(stored)[0].row.metric == "sanity_pass_share"


def test_transparency_check_label_randomisation(tiny_net, tiny_data) -> None:  # type: ignore[no-untyped-def]
    import mlsafety.audit.checks  # noqa: F401
    from mlsafety.core import InputError

    ctx = AuditContext(Classifier(tiny_net), AuditData(tiny_data, tiny_data, train=tiny_data))
    check = CHECKS.create(
        "transparency",
        methods=["saliency"],
        grid_methods=["saliency"],
        examples=0,
        sanity_inputs=4,
        sanity_modes=["label"],
        label_epochs=1,
        visualize=False,
    )
    rows = {r.metric: r for r in _run_tasks(check, ctx).rows}
    assert rows["saliency_label_spearman"].params["stages"] == ["labels"]
    assert "saliency_label_pass" in rows
    no_train = AuditContext(Classifier(tiny_net), AuditData(tiny_data, tiny_data))
    try:
        check.tasks(no_train)[0].run()
    except InputError as exc:
        assert "training data" in str(exc)
    else:
        raise AssertionError("expected an InputError without training data")
