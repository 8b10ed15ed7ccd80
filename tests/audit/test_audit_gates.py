import math

import pytest

from mlsafety.audit import StoredRow, compare_rows, evaluate_gates, parse_gate_option
from mlsafety.audit._gates import parse_gate_key
from mlsafety.core import Hazard, InputError, UnknownNameError


def row(check, hazard, metric, value, lo=None, hi=None):
    return StoredRow(check, hazard, metric, value, lo, hi, 100, {})


def test_gate_keys_split_at_first_and_last_slash():
    key = parse_gate_key("defence-in-depth/adversarial/pgd/0.1/escaped_failure_rate")
    assert (key.check, key.hazard, key.metric) == (
        "defence-in-depth",
        Hazard.adversarial("pgd", 0.1),
        "escaped_failure_rate",
    )
    assert str(key) == "defence-in-depth/adversarial/pgd/0.1/escaped_failure_rate"
    assert parse_gate_key("clean/*/accuracy").hazard == "*"
    for bad in ("accuracy", "clean/accuracy", "clean//accuracy", "/clean/accuracy", "clean/clean/"):
        with pytest.raises(InputError, match="must look like"):
            parse_gate_key(bad)
    with pytest.raises(InputError, match=r"gate metric 'x/corruption/fog/high/m'.*severity is an integer"):
        parse_gate_key("x/corruption/fog/high/m")
    with pytest.raises(InputError, match="empty part"):
        parse_gate_key("x/ood//*/m")
    assert parse_gate_option("clean/clean/accuracy=0.9") == ("clean/clean/accuracy", 0.9)
    with pytest.raises(InputError, match="not a number"):
        parse_gate_option("clean/clean/accuracy=high")


def test_fail_under_fail_over_and_star():
    rows = [
        row("clean", "clean", "accuracy", 0.9),
        row("defence-in-depth", "ood/a", "escaped_failure_rate", 0.3),
        row("defence-in-depth", "ood/b", "escaped_failure_rate", 0.1),
        row("defence-in-depth", "adversarial/pgd/0.1", "escaped_failure_rate", 0.5),
    ]
    assert evaluate_gates(rows, {"clean/clean/accuracy": 0.9}, {}) == []
    (fail,) = evaluate_gates(rows, {"clean/clean/accuracy": 0.95}, {})
    assert fail.key == "clean/clean/accuracy" and fail.kind == "fail_under"
    over = evaluate_gates(rows, {}, {"defence-in-depth/*/escaped_failure_rate": 0.2})
    assert sorted(f.key.split("/")[1] for f in over) == ["adversarial", "ood"]  # ood/a and adversarial/pgd/0.1
    assert len(over) == 2
    only_ood = evaluate_gates(rows, {}, {"defence-in-depth/ood/*/escaped_failure_rate": 0.2})
    assert [f.key for f in only_ood] == ["defence-in-depth/ood/a/escaped_failure_rate"]
    with pytest.raises(UnknownNameError, match="matches no stored metric"):
        evaluate_gates(rows, {"clean/clean/nope": 0.5}, {})
    # the hazard is read as a hazard: another spelling of the same eps names the same row
    (same,) = evaluate_gates(rows, {}, {"defence-in-depth/adversarial/pgd/0.10/escaped_failure_rate": 0.2})
    assert same.key == "defence-in-depth/adversarial/pgd/0.1/escaped_failure_rate"
    every_pgd = evaluate_gates(rows, {}, {"defence-in-depth/adversarial/pgd/*/escaped_failure_rate": 0.2})
    assert [f.value for f in every_pgd] == [0.5]


def test_compare_uses_the_interval_of_the_difference_and_direction():
    a = [row("clean", "clean", "accuracy", 0.90, 0.86, 0.94), row("clean", "clean", "x", 1.0)]
    # intervals overlap ([0.86, 0.94] vs [0.80, 0.88]) but the drop 0.06 > hypot(0.04, 0.04) = 0.057
    b = [row("clean", "clean", "accuracy", 0.84, 0.80, 0.88), row("clean", "clean", "x", 1.0)]
    acc, same = compare_rows(a, b)
    assert acc.intervals_overlap and acc.significant and acc.direction == 1 and acc.verdict == "worse"
    assert math.isclose(acc.delta, -0.06) and not same.significant and same.verdict == ""
    (back,) = compare_rows(b[:1], a[:1])
    assert back.verdict == "better"
    small = [row("clean", "clean", "accuracy", 0.88, 0.84, 0.92)]
    assert not compare_rows(a[:1], small)[0].significant
    unknown = compare_rows([row("nope", "h", "m", 1.0, 0.9, 1.1)], [row("nope", "h", "m", 2.0, 1.9, 2.1)])[0]
    assert unknown.verdict == "changed"


@pytest.mark.parametrize("text", ["clean/clean/accuracy=nan", "clean/clean/accuracy=inf", "clean/clean/accuracy=-inf"])
def test_non_finite_bounds_are_refused(text):
    with pytest.raises(InputError, match="not a finite number"):
        parse_gate_option(text)


def test_gates_are_checked_against_the_selected_checks():
    from mlsafety.audit import CHECKS
    from mlsafety.audit._gates import validate_gates

    clean, calib = CHECKS.create("clean"), CHECKS.create("calibration-basic")
    keys = validate_gates({"clean/clean/accuracy": 0.9}, {"calibration-basic/clean/ece": 0.1}, [clean, calib])
    assert [str(k) for k in keys] == ["clean/clean/accuracy", "calibration-basic/clean/ece"]
    with pytest.raises(InputError, match="check 'calibration-basic' is not selected"):
        validate_gates({}, {"calibration-basic/clean/ece": 0.1}, [clean])
    with pytest.raises(InputError, match="--fail-under gate 'claen/clean/accuracy': unknown check 'claen'"):
        validate_gates({"claen/clean/accuracy": 0.5}, {}, [clean])
    with pytest.raises(InputError, match="bound nan is not a finite number"):
        validate_gates({"clean/clean/accuracy": math.nan}, {}, None)
    with pytest.raises(InputError, match="metric 'Accuracy' cannot exist"):
        validate_gates({"clean/clean/Accuracy": 0.5}, {}, None)
    validate_gates({"clean/*/class_3_accuracy": 0.5}, {}, [clean])  # within the declared patterns
    with pytest.raises(InputError, match="stores no metric 'accuracyy'; did you mean 'accuracy'"):
        validate_gates({"clean/clean/accuracyy": 0.5}, {}, [clean])  # every built-in check declares its metrics
    with pytest.raises(InputError, match="--fail-over gate 'clean/clean/class_3': check 'clean' stores no metric"):
        validate_gates({}, {"clean/clean/class_3": 0.5}, None)


def test_config_file_values_are_checked(tmp_path):
    from mlsafety.audit import load_config

    cases = {
        "batch_size = 0": "batch_size must be a positive integer, got 0; use e.g. batch_size = 256",
        "seed = -1": r"seed must be an integer in \[0, 2\*\*63 - 1\]",
        "image_size = [8, 0]": "image_size must be two positive integers H W, got 8 0",
        "channels = 4": "channels must be 1 .grayscale. or 3",
        '[fail_under]\n"clean/clean/accuracy" = nan': r"\[fail_under\] 'clean/clean/accuracy': bound nan is not",
        '[fail_over]\n"clean/clean/accuracy" = "high"': r"\[fail_over\] 'clean/clean/accuracy': bound 'high' is not",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.toml"
        path.write_text(text + "\n")
        with pytest.raises(InputError, match=rf"c{i}\.toml: {message}"):
            load_config(path)
    (tmp_path / "ok.toml").write_text("channels = 1\nseed = 9223372036854775807\n")
    cfg = load_config(tmp_path / "ok.toml")
    assert cfg.channels == 1 and cfg.seed == 2**63 - 1


def test_a_gate_bounds_the_stored_value_not_an_end_of_its_interval():
    """``--fail-under M=V`` fails when M < V and ``--fail-over`` when M > V, M being the stored value: an interval
    reaching past the bound neither fails a value inside it nor rescues a value outside it; equality passes."""
    acc = row("clean", "clean", "accuracy", 0.90, 0.80, 0.97)
    assert evaluate_gates([acc], {"clean/clean/accuracy": 0.85}, {}) == []  # ci_low 0.80 < 0.85
    assert evaluate_gates([acc], {"clean/clean/accuracy": 0.90}, {}) == []
    (under,) = evaluate_gates([acc], {"clean/clean/accuracy": 0.95}, {})  # ci_high 0.97 > 0.95
    assert (under.value, under.bound, under.kind) == (0.90, 0.95, "fail_under") and "below" in str(under)
    rate = row("defence-in-depth", "clean", "escaped_failure_rate", 0.10, 0.02, 0.30)
    assert evaluate_gates([rate], {}, {"defence-in-depth/clean/escaped_failure_rate": 0.20}) == []  # ci_high 0.30
    assert evaluate_gates([rate], {}, {"defence-in-depth/clean/escaped_failure_rate": 0.10}) == []
    (over,) = evaluate_gates([rate], {}, {"defence-in-depth/clean/escaped_failure_rate": 0.05})  # ci_low 0.02
    assert (over.value, over.bound, over.kind) == (0.10, 0.05, "fail_over") and "above" in str(over)
    # the same bound on both sides of one metric: only the side the value breaks fails
    both = evaluate_gates([acc], {"clean/clean/accuracy": 0.95}, {"clean/clean/accuracy": 0.95})
    assert [f.kind for f in both] == ["fail_under"]


def test_compare_calls_a_change_better_or_worse_by_the_metrics_declared_direction(tmp_path):
    """Over a real audit's rows: no check declares a metric both ways, every scorecard headline's direction is the
    one compare uses, and a clear move of each headline in its good direction is 'better', the other 'worse'."""
    from dataclasses import replace

    import numpy as np

    from mlsafety.audit import CHECKS, AuditConfig, run_audit
    from mlsafety.audit._gates import metric_direction

    for name in CHECKS.available():
        cls = CHECKS.get(name)
        assert not set(cls.higher_is_better) & set(cls.lower_is_better), name
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 40))
    np.savez(tmp_path / "o.npz", x=0.3 * rng.random((20, 1, 8, 8)).astype(np.float32), y=-np.ones(20, dtype=int))
    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef small():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    )
    checks = ["clean", "calibration-basic", "ood-basic", "selective", "defence-in-depth"]
    cfg = AuditConfig(model=f"{tmp_path}/m.py:small", data=str(tmp_path / "d.npz"), ood=[str(tmp_path / "o.npz")],
                      checks=checks, quick=True, check_params={"defence-in-depth": {"adaptive": False}})  # fmt: skip
    rows = run_audit(cfg, db=tmp_path / "runs.sqlite", report="").rows
    seen = 0
    for name in checks:
        for h in CHECKS.get(name).headlines([r for r in rows if r.check == name]):
            sign = 1 if h.higher_is_better else -1
            assert metric_direction(h.row, rows) == sign, h.row.key
            for step, verdict in ((1.0, "better"), (-1.0, "worse")):  # far past any interval, in each direction
                moved = replace(h.row, value=h.row.value + sign * step, ci_low=None, ci_high=None, kind="decision")
                (c,) = [c for c in compare_rows(rows, [moved]) if c.key == h.row.key]
                assert c.direction == sign and c.verdict == verdict, h.row.key
            seen += 1
    assert seen >= 5 and {1, -1} <= {metric_direction(r, rows) for r in rows}
