"""The ``adversarial`` check on a text model whose test set holds a text of stop words only: the attack cannot
change it, so it is a failed attack (the model's answer stands), counted in every row, not the end of the check."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from mlsafety.audit import AuditConfig, run_audit
from mlsafety.core import Classifier
from tests.audit.test_text_audit import save_model, write_csv
from tests.support.text import tiny_bert_classifier, tiny_sentences

STOP = "It is."
N = 12
PARAMS = {"adversarial": {"text_recipes": ["deepwordbug"], "text_n": N, "text_budget": 30}}


def test_a_stop_word_text_is_a_failed_attack_counted_in_the_rows(tmp_path) -> None:
    torch.set_num_threads(1)
    save_model(tmp_path / "model")  # tiny_bert_classifier(seed=0), saved
    with torch.inference_mode():
        stop_pred = int(Classifier(tiny_bert_classifier(num_labels=2, seed=0)).logits([STOP]).argmax(dim=1)[0])
    texts, labels = tiny_sentences(N - 1, seed=2)
    texts.insert(5, STOP)
    labels.insert(5, stop_pred)  # labelled as the model reads it: attacked, and it cannot be changed
    write_csv(tmp_path / "data.csv", texts, labels)
    write_csv(tmp_path / "val.csv", *tiny_sentences(20, seed=5))  # a validation set: the test set stays whole
    config = AuditConfig(model=str(tmp_path / "model"), data=str(tmp_path / "data.csv"), val=str(tmp_path / "val.csv"),
                         ood=[], quick=True, checks=["adversarial"], check_params=PARAMS)  # fmt: skip
    audit = run_audit(config, db=tmp_path / "runs.sqlite", report=None)

    con = sqlite3.connect(tmp_path / "runs.sqlite")
    ((data,),) = con.execute("SELECT data FROM artifacts WHERE name = 'text-adversarial-examples-deepwordbug'")
    examples = [json.loads(line) for line in data.decode().splitlines()]
    assert [e["original"] for e in examples] == texts  # text_n covers the whole test set, in order
    stop = examples[5]
    assert (stop["status"], stop["queries"], stop["perturbed"], stop["changed"]) == ("failed", 1, STOP, [])
    assert stop["perturbed_pred"] == stop["label"] == stop_pred

    rows = {r.metric: r for r in audit.rows if r.check == "adversarial"}
    right = [e for e in examples if e["original_pred"] == e["label"]]  # the attacked texts (untargeted)
    held = [e for e in examples if e["perturbed_pred"] == e["label"]]
    won = [e for e in examples if e["status"] == "succeeded"]
    assert stop in right and stop in held and stop not in won
    assert rows["original_accuracy_subset"].n == rows["accuracy_under_attack"].n == N
    assert rows["original_accuracy_subset"].value == pytest.approx(len(right) / N)
    assert rows["accuracy_under_attack"].value == pytest.approx(len(held) / N)
    assert rows["attack_success_rate"].n == len(right)
    assert rows["attack_success_rate"].value == pytest.approx(len(won) / len(right))
    assert rows["queries_per_example"].value == pytest.approx(sum(e["queries"] for e in right) / len(right))
