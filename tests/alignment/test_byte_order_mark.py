"""Files saved by Excel start with a UTF-8 byte-order mark: every text loader reads them as the same file without it,
and a file that is not UTF-8 gets one line, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlsafety.alignment.evals.ethics import load_ethics
from mlsafety.alignment.evals.truthfulqa import load_truthfulqa
from mlsafety.alignment.probes.pairs import load_qa_rows
from mlsafety.cli._interp import _read_prompts
from mlsafety.core import InputError
from mlsafety.core._data import read_class_file

BOM = b"\xef\xbb\xbf"


def _both(tmp_path: Path, name: str, text: str) -> tuple[Path, Path]:
    plain, marked = tmp_path / f"plain-{name}", tmp_path / f"bom-{name}"
    plain.write_bytes(text.encode("utf-8"))
    marked.write_bytes(BOM + text.encode("utf-8"))
    return plain, marked


def _rows(subset) -> tuple:
    return subset.subset, subset.first, subset.second, subset.labels.tolist(), subset.groups.tolist()


def test_ethics_csvs_with_a_byte_order_mark(tmp_path: Path) -> None:
    plain, marked = _both(tmp_path, "cm.csv", "label,input,is_short,edited\r\n1,I kicked the dog.,True,False\r\n")
    assert _rows(load_ethics("commonsense", marked)) == _rows(load_ethics("commonsense", plain))
    plain, marked = _both(tmp_path, "util.csv", "I won a prize.,I lost my keys.\r\n")  # no header: text starts at once
    got = load_ethics("utilitarianism", marked)
    assert got.first == ("I won a prize.",) and _rows(got) == _rows(load_ethics("utilitarianism", plain))


def test_truthfulqa_csv_and_json_with_a_byte_order_mark(tmp_path: Path) -> None:
    header = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\r\n"
    plain, marked = _both(tmp_path, "tqa.csv", header + "A,Misc,Q one?,Alpha,Alpha; Beta,Gamma; Delta,x\r\n")
    assert load_truthfulqa(marked) == load_truthfulqa(plain)
    items = [{"question": "Q?", "mc1_targets": {"A.": 1, "B.": 0}, "mc2_targets": {"A.": 1, "B.": 0}}]
    plain, marked = _both(tmp_path, "mc_task.json", json.dumps(items))
    assert load_truthfulqa(marked) == load_truthfulqa(plain)


def test_question_answer_rows_with_a_byte_order_mark(tmp_path: Path) -> None:
    plain, marked = _both(tmp_path, "qa.csv", "question,answer,label\nIs ice cold?,yes,1\nIs fire cold?,yes,0\n")
    a, b = load_qa_rows(marked, name="qa"), load_qa_rows(plain, name="qa")
    assert a.items == b.items and a.labels.tolist() == b.labels.tolist()


def test_class_lists_and_prompt_files_with_a_byte_order_mark(tmp_path: Path) -> None:
    plain, marked = _both(tmp_path, "classes.txt", "cat\ndog\n")
    assert read_class_file(marked) == read_class_file(plain) == ["cat", "dog"]
    plain, marked = _both(tmp_path, "prompts.txt", "The capital of France is\n")
    assert _read_prompts(str(marked), "--clean") == _read_prompts(str(plain), "--clean") == ["The capital of France is"]


@pytest.mark.parametrize("load", [lambda p: load_ethics("commonsense", p), load_truthfulqa], ids=["ethics", "tqa"])
def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path, load) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("label,input\n1,caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text; save it as UTF-8"):
        load(path)
