"""Row kinds (issue 12, point 11): every stored number says what it is, and an estimate carries its interval."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from mlsafety.audit import Row, StoredRow
from mlsafety.audit._check import KINDS, fmt_ci, interval_problem
from mlsafety.audit._store import SCHEMA_VERSION, Store
from mlsafety.cli import main
from mlsafety.core import InputError
from mlsafety.metrics import Estimate


def test_kinds_and_their_contract() -> None:
    assert KINDS == ("estimate", "decision", "count", "setting")
    assert Row("clean", "accuracy", 0.9, 0.85, 0.93, 100).kind == "estimate"
    assert interval_problem("estimate", 0.9, 0.85, 0.93) is None
    assert "must carry" in (interval_problem("estimate", 0.9, None, None) or "")
    assert "outside" in (interval_problem("estimate", 0.9, 0.91, 0.95) or "")
    assert "not finite" in (interval_problem("estimate", 0.9, float("-inf"), 0.95) or "")
    assert "not one of" in (interval_problem("guess", 0.9, None, None) or "")
    for kind in ("decision", "count", "setting"):
        assert interval_problem(kind, 3.0, None, None) is None


def test_a_row_refuses_an_estimate_without_its_interval() -> None:
    with pytest.raises(ValueError, match="must carry a 95% interval"):
        Row("clean", "accuracy", 0.9)
    with pytest.raises(ValueError, match="outside its interval"):
        Row("clean", "accuracy", 0.9, 0.91, 0.95, 100)
    with pytest.raises(ValueError, match="not finite"):
        Row("clean", "accuracy", 0.9, float("nan"), 0.95, 100)
    assert Row("clean", "threshold", 0.5, kind="setting").ci_low is None


def test_a_row_refuses_an_unknown_kind_and_an_interval_on_a_non_estimate() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Row("clean", "x", 1.0, kind="guess")
    with pytest.raises(ValueError, match="carries no interval"):
        Row("clean", "threshold", 0.5, 0.4, 0.6, kind="setting")
    with pytest.raises(ValueError, match=r"Row\.of"):
        Row.exact("clean", "x", 1.0, "estimate")
    r = Row.exact("clean", "flagged", 1.0, "decision", threshold=2.0)
    assert (r.kind, r.ci_low, r.ci_high, dict(r.params)) == ("decision", None, None, {"threshold": 2.0})
    assert Row.of("clean", "a", Estimate(0.5, 0.4, 0.6, 10)).kind == "estimate"


def test_the_report_shows_a_kind_where_an_interval_would_stand() -> None:
    est = StoredRow("c", "clean", "a", 0.5, 0.4, 0.6, 10, {})
    assert fmt_ci(est) == "[0.4, 0.6]"
    for kind in ("decision", "count", "setting"):
        assert fmt_ci(StoredRow("c", "clean", "a", 3.0, None, None, None, {}, kind)) == f"({kind})"


def test_kinds_are_stored_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Store(tmp_path / "runs.sqlite") as store:
        run = store.create_run("m", "d", 0, "fp", {}, "0")
        rows = [
            Row("clean", "accuracy", 0.9, 0.85, 0.93, 100),
            Row.exact("clean", "n_classes", 10, "count"),
            Row.exact("clean", "threshold", 0.5, "setting"),
            Row.exact("clean", "flagged", 0.0, "decision"),
        ]
        store.write_task(run, "c", "t", rows, [], 0.1)
        back = {r.metric: r.kind for r in store.results(run)}
    assert back == {"accuracy": "estimate", "n_classes": "count", "threshold": "setting", "flagged": "decision"}
    con = sqlite3.connect(tmp_path / "runs.sqlite")
    with pytest.raises(sqlite3.IntegrityError):  # the column itself refuses anything else
        con.execute("UPDATE results SET kind='guess'")
    con.close()


def _old_database(path) -> None:  # type: ignore[no-untyped-def]
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version=1")
    con.commit()
    con.close()


def test_a_database_without_kinds_is_refused_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert SCHEMA_VERSION == 2
    path = tmp_path / "old.sqlite"
    _old_database(path)
    with pytest.raises(InputError, match="schema version 1, this mlsafety reads version 2"):
        Store(path)
    out = CliRunner().invoke(main, ["runs", "--db", str(path)])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "schema version 1" in lines[0] and "pass another --db" in lines[0]


def test_runs_show_gives_each_number_its_kind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    db = tmp_path / "runs.sqlite"
    with Store(db) as store:
        run = store.create_run("m", "d", 0, "fp", {}, "0")
        rows = [Row("clean", "accuracy", 0.9, 0.85, 0.93, 100), Row.exact("clean", "threshold", 0.5, "setting")]
        store.write_task(run, "c", "t", rows, [], 0.1)
        store.finish_run(run)
    out = CliRunner().invoke(main, ["runs", "show", run, "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    assert {r["key"]: r["kind"] for r in json.loads(out.output)} == {
        "c/clean/accuracy": "estimate",
        "c/clean/threshold": "setting",
    }
    table = CliRunner().invoke(main, ["runs", "show", run, "--db", str(db)])
    assert table.exit_code == 0 and "(setting)" in table.output and "[0.85, 0.93]" in table.output
