"""The ``adversarial`` check on a text model: recipe rows with intervals, marked examples, defence in depth."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import InputError
from tests.audit.test_text_audit import save_model, write_csv
from tests.support.text import tiny_sentences

PARAMS = {"adversarial": {"text_recipes": ["deepwordbug"], "text_n": 10, "text_budget": 40}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("text-adversarial")
    save_model(d / "model")
    texts, labels = tiny_sentences(30, seed=2)
    write_csv(d / "data.csv", texts, labels)
    return d


@pytest.fixture(scope="module")
def audit(files):
    torch.set_num_threads(1)
    config = AuditConfig(model=str(files / "model"), data=str(files / "data.csv"), ood=[], quick=True,
                         checks=["clean", "adversarial", "defence-in-depth"], check_params=PARAMS)  # fmt: skip
    return run_audit(config, db=files / "runs.sqlite", report=files / "report.html")


def test_rows_carry_intervals_and_agree_with_each_other(audit) -> None:
    rows = {r.metric: r for r in audit.rows if r.check == "adversarial"}
    assert {"attack_success_rate", "accuracy_under_attack", "queries_per_example", "original_accuracy_subset"} <= set(
        rows
    )
    assert all(r.hazard == "text-adversarial/deepwordbug" for r in rows.values())
    for r in rows.values():
        assert r.ci_low is not None and r.ci_low - 1e-9 <= r.value <= r.ci_high + 1e-9, r
    orig, under = rows["original_accuracy_subset"], rows["accuracy_under_attack"]
    assert orig.n == under.n == 10
    asr = rows["attack_success_rate"]
    # accuracy under attack = correct-before share x (1 - success rate), counted on the same texts
    assert under.value == pytest.approx(orig.value * (1 - asr.value), abs=1e-9)
    assert rows["queries_per_example"].value <= 40


def test_examples_are_stored_with_changed_words_marked(audit, files) -> None:
    con = sqlite3.connect(files / "runs.sqlite")
    ((data,),) = con.execute("SELECT data FROM artifacts WHERE name = 'text-adversarial-examples-deepwordbug'")
    examples = [json.loads(line) for line in data.decode().splitlines()]
    assert len(examples) == 10
    for e in examples:
        assert e["queries"] <= 40
        if e["status"] == "succeeded":
            assert e["marked"].count("[[") == len(e["changed"]) >= 1
            assert e["perturbed_pred"] != e["label"]
        else:
            assert e["perturbed"] == e["original"]


def test_defence_in_depth_measures_the_adversarial_texts(audit) -> None:
    keys = {r.key for r in audit.rows if r.check == "defence-in-depth"}
    assert "defence-in-depth/text-adversarial/deepwordbug/escaped_failure_rate" in keys


def test_unknown_recipe_is_refused_before_anything_is_stored(files) -> None:
    bad = {"adversarial": {"text_recipes": ["textfoolr"]}}
    config = AuditConfig(model=str(files / "model"), data=str(files / "data.csv"), ood=[], quick=True,
                         checks=["adversarial"], check_params=bad)  # fmt: skip
    db = files / "bad.sqlite"
    with pytest.raises(InputError, match="textfooler"):
        run_audit(config, db=db, report=None)
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_the_report_shows_the_text_attack_table(audit, files) -> None:
    html = (files / "report.html").read_text(encoding="utf-8")
    assert "Text attacks" in html and "deepwordbug" in html
    assert "Accuracy under text attack (deepwordbug)" in html
