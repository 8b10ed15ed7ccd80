"""A check's bad parameter is refused when the audit is planned, in one line, before its run is stored.

Each of these was accepted at planning and refused by the library only once the check's task ran, after the
run existed (two lines, a run marked failed), or was not refused at all (adversarial n = 0 and pairs = -1,
transparency threshold = 7 and examples = -1 ran and stored rows).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError

CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "adversarial n = 0": ("adversarial", {"n": 0}, "adversarial: n must be an integer >= 1"),
    "adversarial pairs = -1": ("adversarial", {"pairs": -1}, "adversarial: pairs must be an integer >= 0"),
    "calibration n_bins = 0": ("calibration", {"n_bins": 0}, "calibration: n_bins must be an integer >= 1"),
    "calibration unknown calibrator": ("calibration", {"calibrators": ["tempreature"]}, "unknown calibrator"),
    "calibration-basic n_boot = 0": ("calibration-basic", {"n_boot": 0}, "n_boot must be an integer >= 1"),
    "certified alpha = 1.5": ("certified", {"alpha": 1.5}, "certified: alpha must be a number in (0, 1)"),
    "certified negative radius": ("certified", {"radii": [0.5, -1.0]}, "radii must be a number in [0, inf)"),
    "certified n = 0": ("certified", {"n": 0}, "certified: n must be an integer >= 1"),
    "ood detector parameter": ("ood", {"detectors": ["knn"], "params": {"knn": {"k": -3}}}, "k must be >= 1"),
    "ood parameters of a detector not run": (
        "ood",
        {"detectors": ["msp"], "params": {"knn": {"k": 5}}},
        "parameters are given for 'knn'",
    ),
    "selective coverage = 1.5": ("selective", {"coverage": 1.5}, "selective: coverage must be a number in (0, 1]"),
    "selective risk = -0.1": ("selective", {"risk": -0.1}, "selective: risk must be a number in [0, 1]"),
    "selective unknown detector": ("selective", {"detectors": ["msp", "nosuch"]}, "unknown detector 'nosuch'"),
    "selective default not run": ("selective", {"default": "energy", "detectors": ["msp"]}, "is not among"),
    "transparency threshold = 7": ("transparency", {"threshold": 7}, "threshold must be a number in [-1, 1]"),
    "transparency examples = -1": ("transparency", {"examples": -1}, "examples must be an integer >= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_check_parameter_is_refused_before_the_run_is_stored(case: str, tmp_path: Path) -> None:
    check, params, needle = CASES[case]
    config = AuditConfig(model="digits-cnn", checks=[check], check_params={check: params}, max_samples=40)
    db = tmp_path / "runs.sqlite"
    with pytest.raises(InputError) as err:
        run_audit(config, db=db, report="")
    assert needle in str(err.value) and "\n" not in str(err.value)
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
