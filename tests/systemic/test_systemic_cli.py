"""The `mlsafety fmea` command: scales, a stored run's FMEA table, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlsafety.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlsafety.audit import AuditConfig, run_audit

    path = tmp_path_factory.mktemp("fmea") / "runs.sqlite"
    cfg = AuditConfig(
        quick=True, checks=["defence-in-depth"], check_params={"defence-in-depth": {"monitors": ["energy"]}}
    )
    run_audit(cfg, db=path, report="")
    return path


def test_scales_list_every_band() -> None:
    from mlsafety.systemic import DETECTION_TABLE, OCCURRENCE_TABLE

    res = CliRunner().invoke(main, ["fmea", "--scales"])
    assert res.exit_code == 0, res.output
    assert "Occurrence" in res.output and "Detection" in res.output and "adversarial" in res.output
    assert res.output.count("\n") > len(OCCURRENCE_TABLE) + len(DETECTION_TABLE)


def test_table_of_a_stored_run(db: Path) -> None:
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "RPN" in res.output and "clean" in res.output and "ood/letters" in res.output


def test_errors_are_one_line_exit_2(db: Path, tmp_path: Path) -> None:
    from mlsafety.audit import AuditConfig, run_audit

    res = CliRunner().invoke(main, ["fmea"])
    assert res.exit_code == 2 and "RUN_ID" in res.output
    other = tmp_path / "clean-only.sqlite"
    run_audit(AuditConfig(quick=True, checks=["clean"]), db=other, report="")
    res = CliRunner().invoke(main, ["fmea", "latest", "--db", str(other)])
    assert res.exit_code == 2 and "no FMEA rows" in res.output
