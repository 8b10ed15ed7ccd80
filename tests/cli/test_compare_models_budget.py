"""``compare`` of two models audited under one --budget (issue 22): the sample sizes the budget chose
from each run's costs are noted, not treated as a settings difference, and the models are named."""

from __future__ import annotations

from click.testing import CliRunner

from mlsafety.audit import Row, Store, settings_diff
from mlsafety.cli import main


def _config(n: int, steps: int, budget: str | None = "3m", configured: int = 200) -> dict:
    knobs = [
        {"check": "adversarial", "param": "n", "configured": configured, "chosen": n},
        {"check": "trojans", "param": "nc_steps", "configured": 200, "chosen": steps},
    ]
    return {
        "quick": False,
        "seed": 0,
        "budget": budget,
        "plan": {"knobs": knobs},
        "effective_params": {"adversarial": {"n": n, "steps": 25}, "trojans": {"nc_steps": steps}, "clean": {}},
    }


def test_budget_chosen_sample_sizes_are_not_a_settings_difference() -> None:
    diff = settings_diff(_config(90, 20), _config(40, 20))
    assert not diff and diff.sample_sizes == ["adversarial: n: 90 -> 40"] and not diff.affects("adversarial")
    # optimisation steps change what is measured: still a settings difference
    diff = settings_diff(_config(90, 20), _config(90, 50))
    assert diff.by_check == {"trojans": ["nc_steps: 20 -> 50"]} and not diff.sample_sizes
    # sizes the user chose (no budget), another budget, or another configured size: settings, as before
    cases = [
        (_config(90, 20, budget=None), _config(40, 20, budget=None)),
        (_config(90, 20), _config(40, 20, budget="5m")),
        (_config(90, 20), _config(40, 20, configured=500)),
    ]
    for a, b in cases:
        assert settings_diff(a, b).affects("adversarial") and not settings_diff(a, b).sample_sizes
    # a size that differs together with another parameter of its check: the check is touched
    b = _config(40, 20)
    b["effective_params"]["adversarial"]["steps"] = 100
    assert settings_diff(_config(90, 20), b).by_check == {"adversarial": ["n: 90 -> 40", "steps: 25 -> 100"]}


def test_compare_of_two_models_under_one_budget_counts_their_differences(tmp_path) -> None:
    db = tmp_path / "runs.sqlite"
    ids = []
    with Store(db) as store:
        for model, config, robust, acc in (
            ("plain", _config(90, 20), 0.0, 0.93),
            ("hardened", _config(40, 20), 0.7, 0.85),
        ):
            run = store.create_run(model, "fashion-mnist", 0, "f", config, "v")
            rows = [Row("adversarial/apgd/0.1", "robust_accuracy", robust, max(0, robust - 0.1), robust + 0.1, 40),
                    Row("clean", "accuracy", acc, acc - 0.01, acc + 0.01, 1000)]  # fmt: skip
            store.write_task(run, "adversarial", "t", rows[:1], [], 0.1)
            store.write_task(run, "clean", "clean", rows[1:], [], 0.1)
            store.finish_run(run)
            ids.append(run)
    out = CliRunner().invoke(main, ["compare", *ids, "--db", str(db), "--fail-on-change"], env={"COLUMNS": "200"})
    assert out.exit_code == 1, out.output  # the clean accuracy fell: a real regression
    assert "different settings" not in out.output
    assert f"run {ids[0]} audited plain on fashion-mnist, run {ids[1]} hardened" in out.output
    assert "adversarial: n: 90 -> 40" in out.output
    lines = {ln.split()[0]: ln for ln in out.output.splitlines() if ln.strip() and "/" in ln.split()[0]}
    assert lines["adversarial/adversarial/apgd/0.1/robust_accuracy"].rstrip().endswith("better")
    assert lines["clean/clean/accuracy"].rstrip().endswith("worse")
    assert "2 changed beyond their 95% intervals (1 worse" in out.output
