"""Contrast pairs: templates as data, the statements set, user rows, misleading prefixes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlsafety.alignment import project_statements
from mlsafety.alignment.probes import TEMPLATES, Template, load_qa_rows, statement_pairs, text_pairs
from mlsafety.core import InputError


def test_pairs_differ_only_in_the_answer_and_labels_say_which_is_right() -> None:
    pairs = text_pairs(["a  great   film", "awful"], [1, 0])
    t = pairs.template
    assert pairs.prompts() == [
        "a great film\nIs the sentiment of this review positive?",
        "awful\nIs the sentiment of this review positive?",
    ]
    assert (t.yes, t.no) == (" Yes", " No")
    assert pairs.labels.tolist() == [1, 0]
    other = pairs.with_template(TEMPLATES["mr"][1])
    assert other.prompts()[0] == "Review: a great film\nQuestion: Is this review positive? Answer:"


def test_every_source_has_several_valid_templates() -> None:
    for source, templates in TEMPLATES.items():
        assert len(templates) >= 3, source
        assert len({t.name for t in templates}) == len(templates)


def test_statements_are_many_balanced_unique_and_labelled_by_rule() -> None:
    statements = project_statements()
    assert len(statements) >= 500
    assert len({s.text for s in statements}) == len(statements)
    for topic in {s.topic for s in statements}:
        labels = [s.label for s in statements if s.topic == topic]
        assert sum(labels) * 2 == len(labels), topic
    for s in statements:  # the generated sums are checked by evaluating them
        if " + " in s.text:
            left, right = s.text.rstrip(".").split(" = ")
            assert (eval(left) == int(right)) == s.label, s.text  # digits and + only
    first = statement_pairs(64)
    assert len(first) == 64 and int(first.labels.sum()) == 32


def test_template_without_answer_slot_or_with_text_after_it_is_refused() -> None:
    with pytest.raises(InputError, match="no \\{answer\\} slot"):
        Template("x", "{text} Is it true?")
    with pytest.raises(InputError, match="must end with"):
        Template("x", "{text} Is it true?{answer} Thanks.")
    with pytest.raises(InputError, match="lack"):
        text_pairs(["a"], [1]).with_template(Template("x", "{question}?{answer}"))


def test_misleading_prefix_shows_wrong_answers_before_the_same_prompt() -> None:
    pairs = statement_pairs(6)
    mis = pairs.subset([2, 3]).misleading(pairs.subset([0, 1]))
    shown = mis.prefix
    assert '"1 + 2 = 3."\nIs this statement true? No' in shown  # a true statement, answered wrongly
    assert '"1 + 2 = 4."\nIs this statement true? Yes' in shown
    assert mis.prompts()[0].endswith(pairs.prompts()[2]) and mis.prompts()[0].startswith(shown)


def test_user_rows_from_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "qa.csv"
    csv_file.write_text("question,answer,label\nIs ice cold?,yes,1\nIs fire cold?,yes,0\n", encoding="utf-8")
    pairs = load_qa_rows(csv_file)
    assert pairs.labels.tolist() == [1, 0] and pairs.dataset == "qa"
    assert pairs.prompts()[0] == "Question: Is ice cold?\nAnswer: yes\nIs this answer correct?"
    jl = tmp_path / "qa.jsonl"
    rows = [{"question": "a?", "answer": "b", "label": True}, {"question": "c?", "answer": "d", "label": 0}]
    jl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert load_qa_rows(jl).labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("question,answer\nq,a\n", "missing column"),
        ("question,answer,label\nq,a,1\nr,b,1\n", "one class only"),
        ("question,answer,label\nq,a,maybe\n", "must be 1/true"),
        ("question,answer,label\n,a,1\n", "empty question"),
    ],
)
def test_bad_user_files_are_one_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=match) as info:
        load_qa_rows(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        load_qa_rows(tmp_path / "missing.csv")
    assert torch.equal(statement_pairs(4).labels, torch.tensor([1, 0, 1, 0]))


def test_subset_keeps_the_groups_so_a_later_split_keeps_twins_together() -> None:
    pairs = statement_pairs(12)
    assert pairs.groups is not None
    part = pairs.subset([5, 0, 1, 4])
    assert part.groups is not None and part.groups.tolist() == pairs.groups[[5, 0, 1, 4]].tolist()
    assert part.labels.tolist() == pairs.labels[[5, 0, 1, 4]].tolist()
    assert text_pairs(["a", "b", "c"], [1, 0, 1]).subset([2, 0]).groups is None
