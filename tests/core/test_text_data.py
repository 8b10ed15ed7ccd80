"""Text loaders (CSV, JSON Lines, a saved Hugging Face dataset) and validate_text_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlsafety.core import (
    InputError,
    TextDataset,
    load_hf_dataset,
    load_text_csv,
    load_text_jsonl,
    validate_text_dataset,
)

ROWS = [("a good film, really", 1), ('she said "bad"', 0), ("fine\nin two lines", 1)]


def write_csv(path: Path, text: str = "text", label: str = "label") -> Path:
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", text, label])
        for i, (t, y) in enumerate(ROWS):
            w.writerow([i, t, y])
    return path


def one_line(info: pytest.ExceptionInfo[InputError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ CSV
def test_csv_happy_path(tmp_path):
    ds = load_text_csv(write_csv(tmp_path / "reviews.csv"))
    assert isinstance(ds, TextDataset) and ds.name == "reviews" and ds.kind == "in"
    assert list(ds.x) == [t for t, _ in ROWS] and ds.y.tolist() == [1, 0, 1]
    assert ds.source == str(tmp_path / "reviews.csv")
    named = load_text_csv(write_csv(tmp_path / "b.csv", "sentence", "y"), text="sentence", label="y", name="b2")
    assert named.name == "b2" and named.y.tolist() == [1, 0, 1]
    ood = load_text_csv(tmp_path / "reviews.csv", kind="far")
    assert ood.is_ood and ood.y.tolist() == [-1, -1, -1]
    assert load_text_csv(tmp_path / "reviews.csv", label=None).y.tolist() == [-1, -1, -1]


def test_csv_tsv_bom_and_whole_float_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes("\ufefftext\tlabel\r\ncaf\u00e9 ok\t2.0\r\nnice\t0\r\n".encode())
    ds = load_text_csv(path, delimiter="\t")
    assert list(ds.x) == ["caf\u00e9 ok", "nice"] and ds.y.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (b"text,label\nok,1\n\xff\xfe,0\n", {}, r"not UTF-8 \(byte 0xff"),
        (b"", {}, "is empty"),
        (b"  \n", {}, "is empty"),
        (b"sentence,label\nok,1\n", {}, r"no column 'text' \(found \['sentence', 'label'\]\); pass text="),
        (b"text,y\nok,1\n", {}, r"no column 'label' \(found \['text', 'y'\]\); pass label="),
        (b"text,label\nok,1\n ,0\n", {}, "row 3 of .* has an empty text"),
        (b"text,label\nok,pos\n", {}, "row 2 of .* has label 'pos', not an integer"),
        (b"text,label\nok,1.5\n", {}, "has label '1.5', not an integer"),
        (b"text,label\nok\n", {}, "row 2 of .* has no value in 'label'"),
        (b"text,label\n", {}, "has no rows"),
    ],
    ids=[
        "not-utf8",
        "empty",
        "blank",
        "no-text-column",
        "no-label-column",
        "empty-text",
        "word-label",
        "fractional-label",
        "short-row",
        "header-only",
    ],
)
def test_csv_bad_input_is_one_line(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_text_csv(path, **kwargs)
    one_line(info)


def test_missing_file_is_one_line(tmp_path):
    for load in (load_text_csv, load_text_jsonl):
        with pytest.raises(InputError, match="not found"):
            load(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not found"):
        load_hf_dataset(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ JSONL
def test_jsonl_happy_path(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps({"text": t, "label": y, "extra": [1]}) for t, y in ROWS]
    path.write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n", encoding="utf-8")
    ds = load_text_jsonl(path)
    assert list(ds.x) == [t for t, _ in ROWS] and ds.y.tolist() == [1, 0, 1] and ds.name == "r"
    path2 = tmp_path / "q.jsonl"
    path2.write_text('{"q": "why", "a": 3.0}\n', encoding="utf-8")
    assert load_text_jsonl(path2, text="q", label="a").y.tolist() == [3]
    assert load_text_jsonl(path2, text="q", label="gone", kind="near").y.tolist() == [-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok", "label": 1}\n\xc3\x28\n', "not UTF-8"),
        (b"", "is empty"),
        (b'{"text": "ok", "label": 1}\n{"text": "x", \n', "line 2 of .* is not valid JSON"),
        (b'["ok", 1]\n', "line 1 of .* is a JSON list, not an object"),
        (b'{"sentence": "ok", "label": 1}\n', r"line 1 of .* has no key 'text' \(found \['label', 'sentence'\]\)"),
        (b'{"text": "ok"}\n', "has no key 'label'"),
        (b'{"text": "", "label": 1}\n', "has an empty text"),
        (b'{"text": 5, "label": 1}\n', "has a int in 'text', not a text"),
        (b'{"text": "ok", "label": true}\n', "has label True, not an integer"),
        (b'{"text": "ok", "label": "one"}\n', "has label 'one', not an integer"),
    ],
    ids=[
        "not-utf8",
        "empty",
        "bad-json",
        "not-object",
        "no-text-key",
        "no-label-key",
        "empty-text",
        "text-not-str",
        "bool-label",
        "word-label",
    ],
)
def test_jsonl_bad_input_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_text_jsonl(path)
    one_line(info)


# ------------------------------------------------------------------------------------------ saved HF dataset
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    table = {"sentence": [t for t, _ in ROWS], "label": [y for _, y in ROWS]}
    folder = tmp_path / "sst"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(table), "test": datasets.Dataset.from_dict(table)}
    ).save_to_disk(str(folder))
    datasets.Dataset.from_dict({"text": ["one", "two"], "label": [0, 1]}).save_to_disk(str(tmp_path / "single"))
    return tmp_path


def test_hf_dataset_happy_path(saved):
    ds = load_hf_dataset(saved / "sst", split="test", text="sentence")
    assert list(ds.x) == [t for t, _ in ROWS] and ds.y.tolist() == [1, 0, 1] and ds.name == "sst-test"
    single = load_hf_dataset(saved / "single")
    assert list(single.x) == ["one", "two"] and single.y.tolist() == [0, 1] and single.name == "single"


def test_a_split_folder_of_a_saved_dataset_dict_loads_as_the_message_says(saved):
    # the CLI has no split option: the refusal's advice (give the split's folder) must work
    ds = load_hf_dataset(saved / "sst" / "test", text="sentence")
    assert ds.y.tolist() == [1, 0, 1]


def test_a_csv_text_longer_than_the_csv_modules_default_field_limit_loads(tmp_path):
    # the csv module refuses fields over 131,072 characters by default; an over-long text must reach
    # the tokenizer, which truncates it (and the audit counts it), not be refused here
    long = "good " * 40_000
    path = tmp_path / "long.csv"
    path.write_text(f"text,label\n{long},1\nshort,0\n", encoding="utf-8")
    ds = load_text_csv(path)
    assert len(ds.x[0]) == len(long) and ds.y.tolist() == [1, 0]


def test_hf_dataset_bad_input_is_one_line(saved):
    cases = [
        (
            lambda: load_hf_dataset(saved / "sst", text="sentence"),
            r"has splits \['test', 'train'\]; give one split's folder \(.*sst/test\) or pass split=",
        ),
        (lambda: load_hf_dataset(saved / "sst", split="dev", text="sentence"), "pass split="),
        (lambda: load_hf_dataset(saved / "sst", split="test"), r"no column 'text' \(found \['sentence', 'label'\]\)"),
        (lambda: load_hf_dataset(saved / "single", split="test"), "without splits"),
        (lambda: load_hf_dataset(saved, split="test"), "not a dataset saved with save_to_disk"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        one_line(info)


def test_hf_dataset_without_the_datasets_package_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(InputError, match="needs the 'datasets' package") as info:
        load_hf_dataset(tmp_path)
    one_line(info)


# ------------------------------------------------------------------------------------------ validation
def test_validate_text_dataset_checks_labels_against_the_classes():
    ds = TextDataset(["a", "b", "c"], [0, 2, 1], name="d")
    validate_text_dataset(ds, num_classes=3)
    validate_text_dataset(ds)
    with pytest.raises(InputError, match=r"labels of dataset 'd' must lie in \[0, 2\)"):
        validate_text_dataset(ds, num_classes=2)
    validate_text_dataset(TextDataset(["a"], None, kind="far"), num_classes=2)  # OOD: no labels to check
    with pytest.raises(InputError, match="expected a TextDataset"):
        validate_text_dataset(torch.zeros(2), num_classes=2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ review fixes
def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    texts = ["a\u2028b", "c\u2029d", "e\u0085f"]
    lines = [json.dumps({"text": t, "label": i % 2}, ensure_ascii=False) for i, t in enumerate(texts)]
    path = tmp_path / "seps.jsonl"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    ds = load_text_jsonl(path)
    assert list(ds.x) == texts and ds.y.tolist() == [0, 1, 0]


def test_a_label_too_large_for_int64_is_one_line(tmp_path):
    csv_path = tmp_path / "huge.csv"
    csv_path.write_text("text,label\na good film,1\nbad,100000000000000000000\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"row 3 of .*huge\.csv has label 100000000000000000000, too large") as info:
        load_text_csv(csv_path)
    one_line(info)
    jsonl_path = tmp_path / "huge.jsonl"
    jsonl_path.write_text('{"text": "fine", "label": 0}\n{"text": "bad", "label": 100000000000000000000}\n')
    with pytest.raises(InputError, match=r"line 2 of .*huge\.jsonl has label 100000000000000000000, too large") as info:
        load_text_jsonl(jsonl_path)
    one_line(info)
    float_path = tmp_path / "huge_float.jsonl"
    float_path.write_text('{"text": "bad", "label": 1e20}\n')
    with pytest.raises(InputError, match="too large"):
        load_text_jsonl(float_path)


def test_a_corrupted_saved_dataset_is_one_line_naming_the_folder(saved):
    (saved / "single" / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match=r"single could not be read as a saved dataset \(JSONDecodeError") as info:
        load_hf_dataset(saved / "single")
    one_line(info)
