"""The truthfulness and ethics audit checks on a tiny saved causal LM: rows, intervals, report, refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError
from tests.support.text import save_with_tokenizer, tiny_llama

TQA = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    "A,Misc,is paris a city ?,yes,yes; true,no; false,x\n"
    "A,Misc,is a cat a dog ?,no,no,yes; true,x\n"
    "A,Misc,is one two ?,no,no; false,yes,x\n"
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval-lm")
    save_with_tokenizer(tiny_llama(0), folder / "llama")
    (folder / "tqa.csv").write_text(TQA)
    return folder


def test_both_checks_store_estimates_with_intervals_and_the_report_has_an_alignment_section(
    llama_dir: Path, tmp_path: Path
) -> None:
    params = {
        "truthfulness": {"truthfulqa": str(llama_dir / "tqa.csv"), "n_boot": 100, "primer": ""},
        "ethics": {"subsets": ["justice", "utilitarianism"], "max_groups": 6, "folds": 2, "batch_size": 32},
    }
    config = AuditConfig(model=str(llama_dir / "llama"), checks=["truthfulness", "ethics"], check_params=params)
    report = tmp_path / "r.html"
    result = run_audit(config, db=tmp_path / "db.sqlite", report=report)
    keys = {r.key: r for r in result.rows}
    mc2 = keys["truthfulness/truthfulqa/truthfulqa/mc2"]
    assert mc2.n == 3 and mc2.ci_low is not None and mc2.ci_low <= mc2.value <= (mc2.ci_high or 0)
    assert len(mc2.params["sha256"]) == 64
    justice = keys["ethics/ethics/justice/zero_shot_exact_match"]
    assert justice.n == 6  # groups of 4, six sampled
    assert keys["ethics/ethics/justice/rows"].value == 24
    assert keys["ethics/ethics/utilitarianism/probe_accuracy"].params["measure"] == "pairwise ranking"
    assert "ethics/ethics/utilitarianism/zero_shot_exact_match" not in keys  # pairs have no groups
    layers = [k for k in keys if k.startswith("ethics/ethics/justice/probe_layer")]
    assert len(layers) == 3  # embeddings + two blocks
    html = report.read_text()
    assert "Machine ethics" in html and "Truthfulness" in html and "NOT ETHICS" in html


def test_a_bad_truthfulqa_file_is_refused_before_anything_is_stored(llama_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Best Answer\nq,a\n")
    params = {"truthfulness": {"truthfulqa": str(bad)}}
    config = AuditConfig(model=str(llama_dir / "llama"), checks=["truthfulness"], check_params=params)
    db = tmp_path / "db.sqlite"
    with pytest.raises(InputError, match="missing column"):
        run_audit(config, db=db, report="")
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0
    params = {"ethics": {"ethics": str(tmp_path / "nowhere")}}
    config = AuditConfig(model=str(llama_dir / "llama"), checks=["ethics"], check_params=params)
    with pytest.raises(InputError, match="no such folder"):
        run_audit(config, db=db, report="")


def test_prompts_over_the_models_context_are_refused_when_planned(llama_dir: Path, tmp_path: Path) -> None:
    """The tiny model takes 64 tokens; the default few-shot primer does not fit: one line, no run stored."""
    params = {"truthfulness": {"truthfulqa": str(llama_dir / "tqa.csv")}}
    config = AuditConfig(model=str(llama_dir / "llama"), checks=["truthfulness"], check_params=params)
    db = tmp_path / "db.sqlite"
    with pytest.raises(InputError, match="longer than the model's 64 tokens") as err:
        run_audit(config, db=db, report="")
    assert "\n" not in str(err.value)
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_an_answer_long_in_tokens_but_short_in_characters_is_refused_when_planned(
    llama_dir: Path, tmp_path: Path
) -> None:
    """Every answer is checked against the context, not only the longest in characters: 40 one-letter
    words (119 characters, 60 tokens) overflow the 64 tokens where a 150-letter word (one token) fits."""
    many = " ".join(["a"] * 60)
    tqa = tmp_path / "tqa.csv"
    tqa.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        f"A,Misc,is paris a city ?,yes,yes; true,{many}; {'b' * 150},x\n"
        "A,Misc,is a cat a dog ?,no,no,yes; true,x\n"
    )
    params = {"truthfulness": {"truthfulqa": str(tqa), "primer": "", "n_boot": 100}}
    config = AuditConfig(model=str(llama_dir / "llama"), checks=["truthfulness"], check_params=params)
    db = tmp_path / "db.sqlite"
    with pytest.raises(InputError, match=r"question 0 with one of its answers is longer than the model's 64") as err:
        run_audit(config, db=db, report="")
    assert "\n" not in str(err.value)
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0
