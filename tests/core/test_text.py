"""Texts, TextBatch, encode, TextDataset and modality_of: the shared text types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    InputError,
    TextBatch,
    TextDataset,
    Texts,
    as_array_dataset,
    encode,
    iter_batches,
    modality_of,
)
from tests.support.text import tiny_bert_classifier, tiny_text_dataset, tiny_tokenizer

SENTENCES = ["a good film", "bad", "the cat sat on the mat", "fine"]


# ------------------------------------------------------------------------------------------ Texts
def test_texts_indexing_like_a_tensor_batch():
    t = Texts(SENTENCES)
    assert len(t) == 4 and t.shape == (4,) and t.shape[0] == 4
    assert t[0] == "a good film" and isinstance(t[0], str)
    assert t[torch.tensor(2)] == "the cat sat on the mat"
    assert t[1:3] == ["bad", "the cat sat on the mat"] and isinstance(t[1:3], Texts)
    assert t[torch.tensor([3, 0])] == ["fine", "a good film"]
    assert t[torch.tensor([True, False, True, False])] == ["a good film", "the cat sat on the mat"]
    assert t[[1, 3]] == ["bad", "fine"]
    assert t[[False, True, False, True]] == ["bad", "fine"]
    assert t[np.array([2, 1])] == ["the cat sat on the mat", "bad"] and t[np.int64(3)] == "fine"
    assert t.to("cpu") is t and list(t) == SENTENCES
    assert Texts.cat([t[:1], ["x"]]) == ["a good film", "x"]
    assert isinstance(t[:1] + ["y"], Texts)  # noqa: RUF005 (Texts.__add__ is what is tested)
    assert Texts(t) == t and hash(Texts(SENTENCES)) == hash(t)


def test_texts_refuses_bad_input():
    with pytest.raises(InputError, match="one string"):
        Texts("a good film")
    with pytest.raises(InputError, match="item 1 is int"):
        Texts(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        Texts(SENTENCES)[torch.tensor([True, False])]
    with pytest.raises(InputError, match="integer or bool"):
        Texts(SENTENCES)[torch.tensor([0.0, 1.0])]


# ------------------------------------------------------------------------------------------ encode
def test_encode_matches_the_tokenizer_and_pads_to_the_longest():
    tok = tiny_tokenizer()
    batch = encode(tok, SENTENCES)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert batch.shape == (4, 8) and len(batch) == 4  # "the cat sat on the mat" + [CLS] [SEP]
    for i, text in enumerate(SENTENCES):
        ids = tok(text)["input_ids"]
        assert batch.input_ids[i, : len(ids)].tolist() == ids
        assert batch.attention_mask[i].tolist() == [1] * len(ids) + [0] * (8 - len(ids))
        assert (batch.input_ids[i, len(ids) :] == tok.pad_token_id).all()
    assert not batch.truncated.any()
    assert batch.lengths.tolist() == [5, 3, 8, 3]


def test_encode_left_padding_mirrors_right_padding():
    tok = tiny_tokenizer()
    right, left = encode(tok, SENTENCES), encode(tok, SENTENCES, padding_side="left")
    for i in range(4):
        assert right.input_ids[i][right.attention_mask[i] == 1].tolist() == (
            left.input_ids[i][left.attention_mask[i] == 1].tolist()
        )
    assert left.attention_mask[1].tolist() == [0] * 5 + [1] * 3
    assert tok.padding_side == "right"  # the tokenizer is not changed


def test_encode_truncates_and_flags_the_cut_texts():
    tok = tiny_tokenizer(max_length=6)
    batch = encode(tok, SENTENCES)
    assert batch.truncated.tolist() == [False, False, True, False]
    assert batch.shape[1] == 6
    assert batch.input_ids[2].tolist()[-1] == tok.sep_token_id  # special tokens survive the cut
    assert encode(tok, SENTENCES, max_length=4).truncated.tolist() == [True, False, True, False]
    assert not encode(tok, SENTENCES, max_length=100).truncated.any()


def test_encode_refuses_empty_texts_and_bad_options():
    tok = tiny_tokenizer()
    with pytest.raises(InputError, match="text 1 is empty"):
        encode(tok, ["fine", ""])
    with pytest.raises(InputError, match="no texts"):
        encode(tok, [])
    with pytest.raises(InputError, match="max_length"):
        encode(tok, ["fine"], max_length=0)
    with pytest.raises(InputError, match="padding_side"):
        encode(tok, ["fine"], padding_side="middle")  # type: ignore[arg-type]


def test_encode_pads_with_eos_when_the_tokenizer_has_no_pad_token():
    tok = tiny_tokenizer("bos")
    tok.pad_token = None
    assert tok.pad_token_id is None
    batch = encode(tok, ["the cat sat", "yes"])
    assert batch.input_ids[1, 2:].tolist() == [tok.eos_token_id] * 2
    assert batch.attention_mask[1].tolist() == [1, 1, 0, 0]
    assert tok.pad_token is None  # nothing set on the tokenizer


def test_text_batch_indexing_drops_unused_padding():
    batch = encode(tiny_tokenizer(), SENTENCES)
    sub = batch[torch.tensor([1, 3])]
    assert sub.shape == (2, 3) and sub.input_ids.tolist() == batch.input_ids[[1, 3], :3].tolist()
    assert batch[0:1].shape == (1, 5) and batch.to("cpu").shape == batch.shape
    with pytest.raises(InputError, match="one shape"):
        TextBatch(batch.input_ids, batch.attention_mask[:, :2], batch.truncated)


# ------------------------------------------------------------------------------------------ TextDataset
def test_text_dataset_behaves_like_array_dataset():
    ds = TextDataset(SENTENCES, [1, 0, 0, 1], name="s")
    assert ds.modality == "text" and ArrayDataset.modality == "image"
    assert len(ds) == 4 and ds.x is ds.texts and ds.y.dtype == torch.int64
    assert ds[1] == ("bad", torch.tensor(0)) and not ds.is_ood and ds.source == "dataset 's'"
    batches = list(ds.batches(3))
    assert [len(x) for x, _ in batches] == [3, 1] and isinstance(batches[0][0], Texts)
    sub = ds.subset(torch.tensor([3, 1]))
    assert sub.x == ["fine", "bad"] and sub.y.tolist() == [1, 0] and sub.name == "s"
    ood = TextDataset(SENTENCES, None, kind="far")
    assert ood.is_ood and ood.y.tolist() == [-1] * 4
    assert TextDataset(SENTENCES, torch.tensor([1.0, 0.0, 2.0, 0.0])).y.tolist() == [1, 0, 2, 0]


def test_text_dataset_refuses_bad_input():
    with pytest.raises(InputError, match="4 texts but 3 labels"):
        TextDataset(SENTENCES, [0, 1, 0])
    with pytest.raises(InputError, match="text 1 of dataset 'd' is empty"):
        TextDataset(["a", ""], [0, 1], name="d")
    with pytest.raises(InputError, match="whole numbers"):
        TextDataset(["a", "b"], torch.tensor([0.5, 1.0]))


def test_iter_batches_and_as_array_dataset_take_a_text_dataset():
    ds = tiny_text_dataset(n=10)
    got = list(iter_batches(ds, 4))
    assert [len(x) for x, _ in got] == [4, 4, 2] and isinstance(got[0][0], Texts)
    assert torch.equal(torch.cat([y for _, y in got if y is not None]), ds.y)
    assert Texts.cat([x for x, _ in got]) == ds.x
    assert as_array_dataset(ds) is ds


def test_tiny_text_dataset_is_seeded_and_balanced_enough():
    a, b = tiny_text_dataset(n=40, seed=3), tiny_text_dataset(n=40, seed=3)
    assert a.x == b.x and torch.equal(a.y, b.y)
    assert a.x != tiny_text_dataset(n=40, seed=4).x
    assert 5 < int(a.y.sum()) < 35


def test_modality_of():
    model = tiny_bert_classifier()
    assert modality_of(model) == "text" and modality_of(Classifier(model)) == "text"
    assert modality_of(tiny_text_dataset(4)) == "text" and modality_of(Texts(["a"])) == "text"
    assert modality_of(["a", "b"]) == "text"
    assert modality_of(torch.utils.data.DataLoader(tiny_text_dataset(4), batch_size=2)) == "text"
    assert modality_of(torch.rand(2, 1, 8, 8)) == "image"
    assert modality_of(ArrayDataset(torch.rand(2, 1, 4, 4), torch.zeros(2))) == "image"
    assert modality_of(torch.nn.Linear(3, 2)) == "image" and modality_of(Classifier(torch.nn.Linear(3, 2))) == "image"


def test_texts_in_other_containers_point_to_text_dataset():
    from torch.utils.data import DataLoader

    pairs = [("a good film", 1), ("bad", 0)]
    for data in (pairs, DataLoader(pairs, batch_size=2)):
        with pytest.raises(InputError, match=r"inputs are str values; .*give texts as a TextDataset"):
            list(iter_batches(data))


# ------------------------------------------------------------------------------------------ review fixes
def test_text_batch_negative_int_index_is_the_row_from_the_end():
    batch = encode(tiny_tokenizer(), ["a good film", "bad", "the cat sat"])
    last = batch[-1]
    assert len(last) == 1 and torch.equal(last.input_ids, batch[2].input_ids)
    assert torch.equal(batch[-3].input_ids, batch[0].input_ids)
    with pytest.raises(IndexError):
        batch[3]
    with pytest.raises(IndexError):
        batch[-4]


def test_a_list_of_numpy_bools_is_a_mask():
    t = Texts(["a", "b", "c"])
    assert t[[np.bool_(True), np.bool_(False), np.bool_(True)]] == ["a", "c"]
    assert t[list(np.array([False, True, False]))] == ["b"]


def test_whitespace_only_texts_are_refused_like_empty_ones():
    with pytest.raises(InputError, match="text 1 is empty or only whitespace") as info:
        encode(tiny_tokenizer(), ["a good film", "  \t\n "])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="text 0 of dataset 'data' is empty or only whitespace"):
        TextDataset(["   "], [0])


def test_a_label_too_large_for_int64_is_one_line():
    with pytest.raises(InputError, match="label 1 of dataset 'data' is 100000000000000000000, too large") as info:
        TextDataset(["a", "b"], [0, 10**20])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="too large"):
        TextDataset(["a", "b"], [0, -(10**20)])
