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


def test_defence_in_depth_measures_the_adversarial_texts_and_an_adaptive_attack(audit) -> None:
    rows = {
        r.metric: r for r in audit.rows if r.check == "defence-in-depth" and r.hazard == "text-adversarial/deepwordbug"
    }
    plain, adaptive = rows["escaped_failure_rate"], rows["adaptive_escaped_failure_rate"]
    # the adaptive figure is the per-text worst case of the plain attack and the monitor-aware one
    assert adaptive.value >= plain.value
    assert adaptive.n == plain.n == 10


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


def test_the_monitor_aware_goal_needs_a_wrong_answer_the_monitor_lets_through() -> None:
    from mlsafety.audit.checks._adversarial_text import MonitorAwareGoal, _MonitoredQueries
    from mlsafety.robustness.text import ModelQueries
    from mlsafety.systemic import Monitor
    from tests.support.linear_text import sentiment_model

    queries = _MonitoredQueries(ModelQueries(sentiment_model()))
    # flags answers less confident than 0.7 (class-1 logit = mean sentiment, class 0's = 0)
    goal = MonitorAwareGoal(queries, Monitor("confidence", confidence_threshold=0.7), None)  # type: ignore[arg-type]
    texts = ["good film", "worse film", "bad film", "worse worse worse film"]  # sentiment 1, -2.75, -1, -8.25
    logits = queries.logits(texts)
    conf = logits.softmax(dim=1).amax(dim=1)
    wrong = logits.argmax(dim=1) != 1
    assert wrong.tolist() == [False, True, True, True]
    expected = wrong & (conf >= 0.7)
    assert goal.reached(logits, 1, None).tolist() == expected.tolist()
    assert expected.any() and not expected.all()
    scores = goal.score(logits, 1, None)
    assert scores[0] <= 0 < scores[1] and bool((scores[expected] == 1).all())
