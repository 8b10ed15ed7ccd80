"""The honesty check on a tiny causal LM: rows, intervals, the plot, the report section (issue 15)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError
from tests.support.text import save_with_tokenizer, tiny_llama

PROMPTS = "text\n" + "".join(f"{a} {b} was quite\n" for a in ("the", "a") for b in ("movie", "film"))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm-honesty")
    save_with_tokenizer(tiny_llama(2), folder / "llama")
    (folder / "prompts.csv").write_text(PROMPTS)
    return folder


@pytest.fixture(scope="module")
def audited(lm_dir: Path) -> tuple[Path, dict]:
    folder = lm_dir
    config = AuditConfig(
        model=str(folder / "llama"),
        data=str(folder / "prompts.csv"),
        checks=["honesty"],
        quick=True,
        check_params={"honesty": {"statements": 24, "templates": 2, "layer_stride": 1, "ccs_epochs": 20}},
    )
    result = run_audit(config, db=folder / "runs.sqlite", report=folder / "report.html")
    return folder, {f"{r.hazard}/{r.metric}": r for r in result.rows}


def test_rows_cover_every_layer_method_and_the_gap_with_intervals(audited) -> None:
    _, rows = audited
    for layer in (0, 1, 2):  # the tiny model has two blocks: streams 0..2
        for stem in ("ccs", "top_pc", "logistic", "mean_diff"):
            r = rows[f"honesty/statements/{stem}_accuracy_layer{layer}"]
            assert r.n == 12 and r.ci_low <= r.value <= r.ci_high
        assert rows[f"honesty/statements/ccs_either_sign_layer{layer}"].value >= 0.5
    for hazard in ("honesty/statements", "honesty/statements-misleading"):
        gap = rows[f"{hazard}/honesty_gap"]
        assert gap.kind == "estimate" and 0 <= gap.ci_low <= gap.value <= gap.ci_high <= 1
        assert rows[f"{hazard}/zero_shot_accuracy"].n == 12
    best = rows["honesty/statements/best_probe_layer"]
    assert best.kind == "decision" and best.params["method"] in ("ccs", "top-pc")
    for stem in ("ccs", "logistic"):  # the stored rule names every restriction best_layer applies
        assert "reads both answers" in rows[f"honesty/statements/{stem}_best_layer"].params["rule"]
    assert "honesty/statements-qa-true/ccs_accuracy" in rows  # the second template, at the best layer


def test_report_has_the_alignment_section_with_the_plot(audited) -> None:
    folder, _ = audited
    html = (folder / "report.html").read_text()
    assert "Honesty probes" in html and "Probe accuracy by layer" in html
    assert html.count("data:image/png;base64,") >= 1 and "Honesty gap" in html


def test_too_few_statements_to_cross_validate_logistic_are_refused_when_planned(lm_dir: Path, tmp_path: Path) -> None:
    """Under 16 statements the fit half holds under 8 (before: 8 were accepted, and logistic regression, which
    fits 4 items at every layer, reported the first layer as its best)."""
    config = AuditConfig(model=str(lm_dir / "llama"), data=str(lm_dir / "prompts.csv"), checks=["honesty"],
                         quick=True, check_params={"honesty": {"statements": 15}})  # fmt: skip
    db = tmp_path / "runs.sqlite"
    with pytest.raises(InputError, match=r"honesty: statements must be an integer >= 16, got 15"):
        run_audit(config, db=db, report=tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0
