import math

import pytest

from mlsafety.audit import StoredRow, compare_rows, evaluate_gates, parse_gate_option
from mlsafety.audit._gates import parse_gate_key
from mlsafety.core import InputError, UnknownNameError


def row(check, hazard, metric, value, lo=None, hi=None):
    return StoredRow(check, hazard, metric, value, lo, hi, 100, {})


def test_gate_keys_split_at_first_and_last_slash():
    key = parse_gate_key("defence-in-depth/adversarial/pgd/0.1/escaped_failure_rate")
    assert (key.check, key.hazard, key.metric) == ("defence-in-depth", "adversarial/pgd/0.1", "escaped_failure_rate")
    with pytest.raises(InputError):
        parse_gate_key("accuracy")
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
