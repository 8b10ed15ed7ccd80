"""The `mlsafety fmea` command, and the systemic parameters and gates through `mlsafety audit --config`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main

CONFIG = """
quick = true
checks = ["defence-in-depth"]

[params.defence-in-depth]
monitors = ["energy"]
severity = { ood = 4, "ood/letters" = 3 }
exposure = { clean = 0.9, "ood/letters" = 0.1 }

[fail_over]
"defence-in-depth/ood/letters/escaped_failure_rate" = 0.0
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("fmea")
    (folder / "ci.toml").write_text(CONFIG)
    db = folder / "runs.sqlite"
    res = CliRunner().invoke(main, ["audit", "--config", str(folder / "ci.toml"), "--db", str(db), "--report", ""])
    return db, res.output + str(res.exit_code)


def test_violated_gate_exits_1_and_names_the_metric(audited: tuple[Path, str]) -> None:
    _, output = audited
    assert output.endswith("1")  # exit code 1: a gate failed
    assert "defence-in-depth/ood/letters/escaped_failure_rate" in output


def test_fmea_table_of_the_stored_run_uses_configured_severity(audited: tuple[Path, str]) -> None:
    db, _ = audited
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(db)])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()]
    lines = {r[1]: r for r in rows if len(r) >= 6 and r[0].isdigit()}
    assert lines["ood/letters"][2] == "3" and lines["ood/noise"][2] == "4" and lines["clean"][2] == "5"
    assert "RPN" in res.output
    assert "S (setting)" in " ".join(res.output.split())  # severity is configured, not measured
    assert "97.5% ranges" in " ".join(res.output.split())  # the note says what the bracketed ranges are


def test_scales_list_every_band() -> None:
    from mlsafety.systemic import DETECTION_TABLE, OCCURRENCE_TABLE

    res = CliRunner().invoke(main, ["fmea", "--scales"])
    assert res.exit_code == 0, res.output
    assert "Occurrence" in res.output and "Detection" in res.output and "adversarial" in res.output
    assert res.output.count("\n") > len(OCCURRENCE_TABLE) + len(DETECTION_TABLE)


def test_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    from mlsafety.audit import AuditConfig, run_audit

    res = CliRunner().invoke(main, ["fmea"])
    assert res.exit_code == 2 and "RUN_ID" in res.output
    other = tmp_path / "clean-only.sqlite"
    run_audit(AuditConfig(quick=True, checks=["clean"]), db=other, report="")
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(other)])
    assert res.exit_code == 2 and "no FMEA rows" in res.output


def test_fmea_lists_the_hazards_it_could_not_score(tmp_path: Path) -> None:
    """`mlsafety fmea` printed the measured hazards alone: a hazard --budget left out (or one without inputs)
    was missing from the table without a word, as if it had no risk."""
    from mlsafety.audit import Row, Store
    from mlsafety.audit._budget import not_measured_row
    from mlsafety.audit._check import DECISION, NOT_APPLICABLE

    db = tmp_path / "r.sqlite"
    scored = [
        Row.exact("clean", "severity", 5.0, DECISION),
        Row("clean", "occurrence", 3.0, 3.0, 4.0, 100, {}),
        Row("clean", "detection", 6.0, 5.0, 7.0, 100, {}),
        Row("clean", "rpn", 90.0, 75.0, 140.0, 100, {"failure_rate": 0.02, "miss_share": 0.5}),
    ]
    why = "ood/letters has no inputs: the data folder holds none"
    with Store(db) as store:
        run = store.create_run("m", "d", 0, "fp", {}, "0")
        rows = [*scored, not_measured_row("corruption/fog/3", "the RPN"),
                Row.exact("ood/letters", NOT_APPLICABLE, 1.0, DECISION, reason=why)]  # fmt: skip
        store.write_task(run, "defence-in-depth", "all", rows, [], 1.0)
        store.finish_run(run)
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(db)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "not measured" in text and "corruption/fog/3" in text and "--budget" in text
    assert "ood/letters" in text and "has no inputs" in text
    # with no hazard scored at all, the refusal says why rather than "audit with the check"
    other = tmp_path / "none.sqlite"
    with Store(other) as store:
        run = store.create_run("m", "d", 0, "fp", {}, "0")
        store.write_task(run, "defence-in-depth", "all", [not_measured_row("clean", "the RPN")], [], 1.0)
        store.finish_run(run)
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(other)])
    assert res.exit_code == 2 and "no hazard was measured" in res.output and "--budget" in res.output
