"""The Classifier on text models: tokenising, output unwrapping, padding, embeddings, hooks and modes."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Outputs, Texts, encode, forward, unwrap_logits
from tests.support.text import VOCAB, tiny_bert_classifier, tiny_gpt2, tiny_llama, tiny_text_dataset, tiny_tokenizer

SENTENCES = ["a good film", "bad", "the cat sat on the mat with a dog", "not a great day"]
ATOL = 1e-5


class BagOfEmbeddings(nn.Module):
    """A text classifier whose forward takes no ``inputs_embeds`` (so the hook path is used)."""

    def __init__(self, vocab: int = len(VOCAB), k: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, k)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[..., None].to(torch.float32)
        return self.fc(self.drop((self.emb(input_ids) * mask).sum(1) / mask.sum(1)))


def bag(seed: int = 0) -> BagOfEmbeddings:
    torch.manual_seed(seed)
    model = BagOfEmbeddings().eval()
    model.tokenizer = tiny_tokenizer()
    return model


@pytest.fixture
def bert() -> nn.Module:
    return tiny_bert_classifier(num_labels=3)


def test_classifier_picks_up_the_tokenizer_and_reads_texts(bert):
    clf = Classifier(bert)
    assert clf.modality == "text" and clf.tokenizer is bert.tokenizer and clf.num_classes == 3
    assert clf.head is bert.classifier
    expected = bert(**bert.tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
    for x in (SENTENCES, Texts(SENTENCES), clf.encode(SENTENCES)):
        assert torch.allclose(clf.logits(x), expected, atol=ATOL)
    other = tiny_tokenizer(max_length=4)
    assert Classifier(bert, tokenizer=other).tokenizer is other
    assert Classifier(bert, tokenizer=other).encode(SENTENCES).truncated.tolist() == [True, False, True, True]


def test_padding_never_changes_the_logits(bert):
    clf = Classifier(bert)
    batch = clf.encode(SENTENCES)
    assert (batch.attention_mask == 0).any()  # the batch really is padded
    together = clf.logits(batch)
    alone = torch.cat([clf.logits([s]) for s in SENTENCES])
    assert torch.allclose(together, alone, atol=ATOL)
    # The check can fail: without the attention mask the padded texts score differently.
    unmasked = bert(input_ids=batch.input_ids).logits
    assert (unmasked[1] - alone[1]).abs().max() > 1e-3


def test_left_and_right_padding_give_the_same_logits(bert):
    clf = Classifier(bert)
    right = encode(bert.tokenizer, SENTENCES, padding_side="right")
    left = encode(bert.tokenizer, SENTENCES, padding_side="left")
    assert torch.allclose(clf.logits(left), clf.logits(right), atol=ATOL)
    assert torch.allclose(clf.features_and_logits(left)[0], clf.features_and_logits(right)[0], atol=ATOL)
    # BERT numbers positions from the first column: read as given, left padding would shift them.
    raw = bert(input_ids=left.input_ids, attention_mask=left.attention_mask).logits
    assert (raw[1] - clf.logits(right)[1]).abs().max() > 1e-3


def test_features_are_the_head_input(bert):
    clf = Classifier(bert)
    feats, logits = clf.features_and_logits(SENTENCES)
    enc = bert.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    pooled = bert.bert(**enc).pooler_output  # dropout is off in eval mode
    assert feats.shape == (4, 32) and torch.allclose(feats, pooled, atol=ATOL)
    assert torch.allclose(feats @ clf.head_weight.T + clf.head_bias, logits, atol=ATOL)


@pytest.mark.parametrize("make", [tiny_bert_classifier, bag], ids=["inputs-embeds", "embedding-hook"])
def test_logits_from_embeddings_equal_logits(make):
    model = make()
    clf = Classifier(model)
    for side in ("right", "left"):
        batch = encode(model.tokenizer, SENTENCES, padding_side=side)  # type: ignore[arg-type]
        emb = clf.embeddings(batch)
        assert emb.shape == (*batch.shape, clf.embedding_layer.embedding_dim)
        assert torch.allclose(clf.logits_from_embeddings(emb, batch.attention_mask), clf.logits(batch), atol=ATOL)
    assert not clf.embedding_layer._forward_hooks


@pytest.mark.parametrize("make", [tiny_bert_classifier, bag], ids=["inputs-embeds", "embedding-hook"])
def test_gradient_flows_to_the_embeddings_and_not_to_padding(make):
    model = make()
    clf = Classifier(model)
    batch = clf.encode(SENTENCES)
    emb = clf.embeddings(batch).detach().requires_grad_(True)
    clf.logits_from_embeddings(emb, batch.attention_mask)[:, 0].sum().backward()
    assert emb.grad is not None
    norms = emb.grad.norm(dim=2)
    real = batch.attention_mask.bool()
    assert (norms[real] > 0).all()
    assert norms[~real].max() < 1e-6  # padding is masked out, so it has no influence


def test_embedding_layer_and_its_absence(bert):
    assert Classifier(bert).embedding_layer is bert.bert.embeddings.word_embeddings
    model = bag()
    assert Classifier(model).embedding_layer is model.emb
    with pytest.raises(InputError, match="no input embedding layer"):
        Classifier(nn.Linear(3, 2)).embedding_layer  # noqa: B018


class Returns(nn.Module):
    def __init__(self, wrap: Any) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        return self.wrap(self.fc(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda z: z,
        lambda z: (z, z.sum()),
        lambda z: [z],
        lambda z: {"loss": z.sum(), "logits": z},
        lambda z: OrderedDict(logits=z),
        lambda z: SimpleNamespace(logits=z, hidden_states=None),
    ],
    ids=["tensor", "tuple", "list", "dict", "ordered-dict", "object"],
)
def test_output_forms_are_unwrapped(wrap):
    torch.manual_seed(0)
    model = Returns(wrap)
    x = torch.rand(3, 4)
    clf = Classifier(model)
    expected = model.fc(x)
    assert torch.equal(clf.logits(x), expected)
    feats, logits = clf.features_and_logits(x)
    assert torch.equal(feats, x) and torch.equal(logits, expected)


def test_transformers_outputs_are_unwrapped(bert):
    enc = bert.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    out = bert(**enc)
    assert unwrap_logits(out) is out.logits
    assert unwrap_logits(bert(**enc, return_dict=False)) is not None


@pytest.mark.parametrize(
    ("wrap", "message"),
    [
        (lambda z: "logits", "returned str, not logits"),
        (lambda z: {"scores": z}, r"keys \['scores'\] but no 'logits'"),
        (lambda z: (), "returned tuple"),
    ],
    ids=["str", "dict-without-logits", "empty-tuple"],
)
def test_other_outputs_are_one_clear_line(wrap, message):
    with pytest.raises(InputError, match=message) as info:
        Classifier(Returns(wrap)).logits(torch.rand(2, 4))
    assert "\n" not in str(info.value)


def test_a_tokenizer_that_does_not_match_the_model_is_one_line():
    torch.manual_seed(0)
    model = BagOfEmbeddings(vocab=10)  # the tokenizer's ids run up to len(VOCAB) - 1
    clf = Classifier(model, tokenizer=tiny_tokenizer())
    with pytest.raises(InputError, match="outside the model's vocabulary of 10 embeddings") as info:
        clf.logits(["the cat sat"])
    assert "\n" not in str(info.value)


def test_texts_without_a_tokenizer_are_refused():
    torch.manual_seed(0)
    clf = Classifier(BagOfEmbeddings())
    assert clf.tokenizer is None
    with pytest.raises(InputError, match="has no tokenizer"):
        clf.logits(["a good film"])
    batch = encode(tiny_tokenizer(), ["a good film"])
    assert clf.logits(batch).shape == (1, 3)  # token ids still work


def test_a_causal_lm_is_pointed_to_language_model():
    with pytest.raises(InputError, match="LanguageModel"):
        Classifier(tiny_llama()).logits(["the cat sat"])


def test_max_length_from_the_model_config_when_the_tokenizer_has_none(bert):
    tok = tiny_tokenizer(max_length=int(1e30))
    clf = Classifier(bert, tokenizer=tok)
    assert clf.text_max_length == bert.config.max_position_embeddings
    assert Classifier(bert, max_length=5).text_max_length == 5
    with pytest.raises(InputError, match="max_length"):
        Classifier(bert, max_length=0)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_hooks_removed_and_modes_restored_after_an_exception():
    model = bag()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    clf = Classifier(model)
    with pytest.raises(InputError):
        clf.features_and_logits(["the cat", ""])  # an empty text is refused mid-call
    emb = clf.embeddings(["the cat"])
    model.drop = Boom()  # the forward pass raises after the hooks are in place
    with pytest.raises(RuntimeError, match="boom"):
        clf.features_and_logits(["the cat"])
    with pytest.raises(RuntimeError, match="boom"):
        clf.logits_from_embeddings(emb, torch.ones(1, emb.shape[1], dtype=torch.long))
    assert not model.fc._forward_pre_hooks and not model.emb._forward_hooks
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_features_and_logits_runs_in_eval_mode_and_restores_it(bert):
    bert.train()
    clf = Classifier(bert)
    a = clf.features_and_logits(SENTENCES)[1]
    b = clf.features_and_logits(SENTENCES)[1]
    assert torch.equal(a, b)  # dropout off inside
    assert all(m.training for m in bert.modules())


def test_forward_on_texts_batches_and_counts_truncation(bert):
    clf = Classifier(bert, max_length=5)
    bert.train()
    flags = [p.requires_grad for p in bert.parameters()]
    out = forward(clf, SENTENCES, batch_size=3)
    assert all(m.training for m in bert.modules()) and [p.requires_grad for p in bert.parameters()] == flags
    bert.eval()
    with torch.no_grad():
        feats, logits = clf.features_and_logits(SENTENCES)
    assert out.logits.shape == (4, 3) and out.features is not None
    assert torch.allclose(out.logits, logits, atol=ATOL) and torch.allclose(out.features, feats, atol=ATOL)
    assert out.truncated == 2  # "the cat sat ..." and "not a great day" exceed 5 tokens with [CLS] [SEP]
    from_batch = forward(clf, clf.encode(SENTENCES), batch_size=2, features=False)
    assert torch.allclose(from_batch.logits, logits, atol=ATOL) and from_batch.truncated == 2
    assert Outputs(logits, None).truncated == 0  # the old two-field form still works


class MeanPooled(nn.Module):
    """A sentence-transformers style classifier: mean of the last hidden states, then a Linear head."""

    def __init__(self, encoder: nn.Module, k: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.config.hidden_size, k)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask[..., None].to(hidden.dtype)
        return self.fc((hidden * mask).sum(1) / mask.sum(1))


@pytest.mark.slow
def test_the_embedded_minilm_reads_texts_padding_free():
    from transformers import AutoModel, AutoTokenizer

    from mlsafety.zoo import asset_dir

    folder = asset_dir("minilm")
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"the minilm asset is not installed in {folder} (make assets)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(0)
    model = MeanPooled(AutoModel.from_pretrained(str(folder), local_files_only=True)).eval()
    texts = ["A gripping, beautifully shot film.", "Dull.", "word " * 600]
    batch = Classifier(model, tokenizer=tok).encode(texts)  # the tokenizer's own limit
    assert batch.shape == (3, 512) and batch.truncated.tolist() == [False, False, True]
    assert int(batch.input_ids[2, -1]) == tok.sep_token_id
    clf = Classifier(model, tokenizer=tok, max_length=32)  # short passes keep the test fast
    batch = clf.encode(texts)
    with torch.no_grad():
        together = clf.logits(batch)
        alone = torch.cat([clf.logits([t]) for t in texts])
        left = clf.logits(encode(tok, texts, max_length=32, padding_side="left"))
    assert torch.allclose(together, alone, atol=1e-4) and torch.allclose(left, alone, atol=1e-4)
    assert forward(clf, texts, batch_size=2).truncated == 1


def test_forward_groups_texts_by_length_and_keeps_the_callers_order(bert):
    clf = Classifier(bert)
    texts = [s for s in tiny_text_dataset(n=12, seed=1).x]
    assert sorted(texts, key=len) != texts  # the grouping really reorders
    out = forward(clf, texts, batch_size=5)
    with torch.no_grad():
        pairs = [clf.features_and_logits([t]) for t in texts]
    assert out.features is not None
    assert torch.allclose(out.logits, torch.cat([lg for _, lg in pairs]), atol=ATOL)
    assert torch.allclose(out.features, torch.cat([f for f, _ in pairs]), atol=ATOL)


# ------------------------------------------------------------------------------------------ review fixes
def _decoder_classifier(pad_token_id: int = 0, seed: int = 0) -> nn.Module:
    """A tiny GPT2ForSequenceClassification over the tiny tokenizer (last-token pooling, a ``score`` head)."""
    return tiny_gpt2(seed, classifier=True, pad_token_id=pad_token_id)


def test_max_length_is_capped_by_the_models_position_embeddings(bert):
    clf = Classifier(bert, tokenizer=tiny_tokenizer(max_length=512))  # the tokenizer claims more than 64 positions
    assert clf.text_max_length == bert.config.max_position_embeddings == 64
    long_text = " ".join(["good"] * 200)
    batch = clf.encode([long_text, "a bad film"])
    assert batch.truncated.tolist() == [True, False] and batch.shape[1] == 64
    assert clf.logits(batch).shape[0] == 2


def test_roberta_style_models_lose_the_padding_offset_from_their_positions():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=34,
        pad_token_id=0,
    )
    model = RobertaForSequenceClassification(config).eval()
    clf = Classifier(model, tokenizer=tiny_tokenizer(max_length=512))
    assert clf.text_max_length == 32
    batch = clf.encode([" ".join(["good"] * 100)])
    assert bool(batch.truncated[0]) and clf.logits(batch).shape == (1, 2)


def test_logits_from_embeddings_equal_logits_for_a_decoder_classifier():
    clf = Classifier(_decoder_classifier())
    texts = ["good film", "the movie was really very bad and sad", "fine"]
    for side in ("right", "left"):
        batch = encode(clf.tokenizer, texts, padding_side=side)  # type: ignore[arg-type]
        logits = clf.logits(batch)
        emb = clf.embeddings(batch).detach().requires_grad_(True)
        from_emb = clf.logits_from_embeddings(emb, batch.attention_mask)
        assert torch.allclose(from_emb, logits, atol=1e-5)
        from_emb[:, 0].sum().backward()
        assert emb.grad is not None
        assert (emb.grad.norm(dim=2)[batch.attention_mask.bool()] > 0).all()
    assert not clf.embedding_layer._forward_hooks


def test_padding_uses_the_models_pad_id_when_it_differs_from_the_tokenizers():
    model = _decoder_classifier(pad_token_id=5)  # the tokenizer pads with 0
    clf = Classifier(model)
    texts = ["good film", "the movie was really very bad and sad"]
    with torch.no_grad():
        batched = clf.logits(texts)
        one_by_one = torch.cat([clf.logits([t]) for t in texts])
        from_emb = clf.logits_from_embeddings(clf.embeddings(texts), clf.encode(texts).attention_mask)
    assert torch.allclose(batched, one_by_one, atol=ATOL)
    assert torch.allclose(from_emb, batched, atol=ATOL)
