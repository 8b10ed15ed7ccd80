"""Attribution methods on text (tiny random BERT): completeness, gradients, occlusion, words, sanity, chores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier, InputError, TextBatch, Texts
from mlsafety.monitoring import transparency as tr
from mlsafety.monitoring.transparency.base import Attribution, InputSpace
from tests.support.text import tiny_bert_classifier, tiny_text_dataset

TEXTS = ["the movie was good", "a bad day", "it is not a great film and i hate the food"]
TEXT_METHODS = tr.available(tr.TEXT)


@pytest.fixture
def bert() -> nn.Module:
    return tiny_bert_classifier(num_labels=2, seed=0)


def test_every_method_is_tagged_with_its_modalities() -> None:
    assert set(TEXT_METHODS) == set(tr.available()) == set(tr.available(tr.IMAGE))


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_text_scores_are_per_token_zero_at_padding_and_deterministic(name: str, bert: nn.Module) -> None:
    clf = Classifier(bert)
    batch = clf.encode(TEXTS)
    method = tr.create(name, **({"steps": 8} if name == "integrated-gradients" else {}))
    if "n_samples" in method.get_params():
        method = tr.create(name, n_samples=4)
    a = method.attribute(bert, TEXTS, 1)
    assert a.shape == batch.input_ids.shape and torch.isfinite(a).all()
    assert (a[batch.attention_mask == 0] == 0).all() and a.abs().sum() > 0
    assert torch.equal(a, method.attribute(clf, Texts(TEXTS), torch.ones(3, dtype=torch.long)))
    assert torch.equal(a, method.attribute(clf, batch, 1))


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_model_is_left_unchanged_on_text(name: str, bert: nn.Module) -> None:
    bert.train()
    bert.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    flags = [p.requires_grad for p in bert.parameters()]
    state = {k: v.clone() for k, v in bert.state_dict().items()}
    tr.create(name).attribute(bert, TEXTS[:2], torch.tensor([0, 1]))
    assert bert.training and [p.requires_grad for p in bert.parameters()] == flags
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bert.modules())
    assert all(p.grad is None for p in bert.parameters())


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_hooks_removed_and_model_restored_after_an_exception(name: str, bert: nn.Module) -> None:
    bert.train()
    calls = {"n": 0}

    def explode(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] >= 1:
            raise _Boom("boom")
        return out

    handle = bert.bert.encoder.layer[1].register_forward_hook(explode)
    try:
        with pytest.raises(_Boom):
            tr.create(name).attribute(bert, TEXTS, 0)
    finally:
        handle.remove()
    assert bert.training and all(p.requires_grad for p in bert.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bert.modules())


def test_integrated_gradients_completeness_on_text(bert: nn.Module) -> None:
    clf = Classifier(bert)
    ig = tr.IntegratedGradients(steps=64)
    attr, delta = ig.attribute_with_delta(clf, TEXTS, torch.tensor([0, 1, 1]))
    batch = clf.encode(TEXTS)
    # The baseline by hand: every real word replaced by [PAD] (ids), special tokens and the mask kept.
    special = (batch.input_ids == bert.tokenizer.cls_token_id) | (batch.input_ids == bert.tokenizer.sep_token_id)
    words_only = batch.attention_mask.bool() & ~special
    base_ids = torch.where(words_only, torch.full_like(batch.input_ids, bert.tokenizer.pad_token_id), batch.input_ids)
    with torch.no_grad():
        full = bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = bert(input_ids=base_ids, attention_mask=batch.attention_mask).logits
    target = torch.tensor([0, 1, 1])
    gap = (full - base).gather(1, target[:, None])[:, 0]
    assert gap.abs().min() > 1e-3  # the test means something
    assert torch.allclose(attr.sum(dim=1), gap, atol=2e-3 * float(gap.abs().max()) + 1e-4)
    assert delta.abs().max() < 2e-3 * float(gap.abs().max()) + 1e-4
    assert (attr[special] == 0).all()
    gap_est = tr.ig_completeness(clf, TEXTS, target, ig)
    assert gap_est.value < 1e-2 and gap_est.n == 3


def test_gradient_saliency_equals_finite_differences_on_the_embedding(bert: nn.Module) -> None:
    model = bert.double()
    clf = Classifier(model)
    batch = clf.encode(TEXTS[:1])
    with torch.no_grad():
        emb = clf.embeddings(batch)
    mask = batch.attention_mask
    h, t, k = 1e-5, 2, 1  # token 2 ("movie"), class 1
    grad = torch.zeros(emb.shape[-1], dtype=torch.float64)
    with torch.no_grad():
        for d in range(emb.shape[-1]):
            up, down = emb.clone(), emb.clone()
            up[0, t, d] += h
            down[0, t, d] -= h
            diff = clf.logits_from_embeddings(up, mask)[0, k] - clf.logits_from_embeddings(down, mask)[0, k]
            grad[d] = diff / (2 * h)
    sal = tr.Saliency().attribute(clf, TEXTS[:1], k)
    ixg = tr.InputXGradient().attribute(clf, TEXTS[:1], k)
    assert torch.allclose(sal[0, t], grad.norm(), rtol=1e-5)
    assert torch.allclose(ixg[0, t], (grad * emb[0, t]).sum(), rtol=1e-5, atol=1e-9)
    with pytest.raises(InputError, match="L2 norm"):
        tr.Saliency(abs=False).attribute(clf, TEXTS[:1], k)


def test_occlusion_equals_the_logit_change_by_hand(bert: nn.Module) -> None:
    clf = Classifier(bert)
    occ = tr.Occlusion().attribute(clf, TEXTS, torch.tensor([1, 0, 1]))
    batch = clf.encode(TEXTS)
    i, t = 2, 4  # a word inside the third text
    ids = batch.input_ids[i : i + 1].clone()
    ids[0, t] = bert.tokenizer.mask_token_id
    with torch.no_grad():
        full = bert(input_ids=batch.input_ids[i : i + 1], attention_mask=batch.attention_mask[i : i + 1]).logits
        hidden = bert(input_ids=ids, attention_mask=batch.attention_mask[i : i + 1]).logits
    assert torch.allclose(occ[i, t], full[0, 1] - hidden[0, 1], atol=1e-5)
    assert occ[i, 0] == 0 and occ[0, batch.attention_mask[0].sum() - 1] == 0  # [CLS] and [SEP] never occluded
    unk = tr.Occlusion(replace="unk").attribute(clf, TEXTS[2:], 1)
    assert not torch.allclose(unk[0, t], occ[i, t])


def test_word_merge_on_a_wordpiece_tokenizer() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "play", "##ing", "un", "##believ", "##able", "!"])}  # fmt: skip
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")  # fmt: skip
    texts = ["the unbelievable playing!", "the zzz"]
    enc = fast(texts, padding=True, return_tensors="pt")
    batch = TextBatch(enc["input_ids"], enc["attention_mask"], torch.zeros(2, dtype=torch.bool))
    scores = (
        torch.arange(batch.input_ids.numel(), dtype=torch.float32).view(batch.input_ids.shape) * batch.attention_mask
    )
    # [CLS] the un ##believ ##able play ##ing ! [SEP]
    expected = [("the", 1.0), ("unbelievable", 2 + 3 + 4.0), ("playing", 5 + 6.0), ("!", 7.0)]
    got = tr.words(fast, texts, batch, scores)
    assert [(w.text, w.score) for w in got[0]] == expected
    assert [(w.start, w.end) for w in got[0]] == [(0, 3), (4, 16), (17, 24), (24, 25)]
    assert [(w.text, w.score) for w in got[1]] == [("the", 10.0), ("zzz", 11.0)]  # [UNK] is a word
    pieces = fast.convert_ids_to_tokens(batch.input_ids[0, 1:8].tolist())
    assert [(w.text, w.score, w.tokens) for w in tr.merge_pieces(pieces, [1, 2, 3, 4, 5, 6, 7])] == [
        ("the", 1, 1), ("unbelievable", 9, 3), ("playing", 11, 2), ("!", 7, 1)]  # fmt: skip


def test_word_merge_on_a_byte_level_tokenizer() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat", "the dog played", "unbelievable films play well"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    texts = ["the cats played unbelievably", "café the"]
    enc = fast(texts, padding=True, return_tensors="pt")
    batch = TextBatch(enc["input_ids"], enc["attention_mask"], torch.zeros(2, dtype=torch.bool))
    scores = torch.ones(batch.input_ids.shape) * batch.attention_mask
    got = tr.words(fast, texts, batch, scores)
    assert [w.text for w in got[0]] == ["the", "cats", "played", "unbelievably"]
    assert [w.text for w in got[1]] == ["café", "the"]
    assert sum(w.score for w in got[0]) == batch.attention_mask[0].sum()
    assert all(w.score == w.tokens for w in got[0]) and max(w.tokens for w in got[0]) > 1

    class Slow:  # the same tokenizer without word_ids(): the Ġ marks decide
        is_fast = False
        all_special_ids = fast.all_special_ids
        unk_token_id = None

        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            return fast.convert_ids_to_tokens(ids)

        def convert_tokens_to_string(self, pieces: list[str]) -> str:
            return fast.convert_tokens_to_string(pieces)

    slow = tr.words(Slow(), texts, batch, scores)
    assert [[(w.text, w.score) for w in ws] for ws in slow] == [[(w.text, w.score) for w in ws] for ws in got]
    assert [(w.text, w.score) for w in tr.merge_pieces(["The", "Ġcat", "s", "Ġsat"], [1, 2, 3, 4])] == [
        ("The", 1), ("cats", 5), ("sat", 4)]  # fmt: skip


def test_explain_text_gives_words_for_the_predicted_class(bert: nn.Module) -> None:
    res = tr.explain_text(tr.create("input-x-gradient"), bert, TEXTS)
    assert [len(ws) for ws in res.words] == [len(t.split()) for t in TEXTS]
    assert [w.text for w in res.words[0]] == TEXTS[0].split()
    real = res.batch.attention_mask.bool() & ~tr.special_mask(bert.tokenizer, res.batch.input_ids)
    per_text = torch.tensor([sum(w.score for w in ws) for ws in res.words])
    assert torch.allclose(per_text, (res.scores * real).sum(dim=1), atol=1e-5)  # [CLS] / [SEP] are no words
    with torch.no_grad():
        assert torch.equal(res.target, Classifier(bert).logits(TEXTS).argmax(dim=1))
    with pytest.raises(InputError):
        tr.explain_text(tr.create("saliency"), bert, "one string")


def _trained_bert(seed: int = 0) -> nn.Module:
    data = tiny_text_dataset(n=64, seed=seed)
    model = tiny_bert_classifier(num_labels=2, seed=seed)
    clf = Classifier(model)
    batch = clf.encode(data.x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(80):
            idx = torch.randperm(len(data), generator=g)[:32]
            out = model(input_ids=batch.input_ids[idx], attention_mask=batch.attention_mask[idx]).logits
            loss = nn.functional.cross_entropy(out, data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (clf.logits(batch).argmax(1) == data.y).float().mean()
    assert acc > 0.9  # it learned the sentiment words
    return model


class WordIdentity(Attribution):
    """An 'explanation' that ignores the model (it scores each token by its embedding's norm): it must fail."""

    name = "word-identity"

    def __init__(self) -> None:
        pass

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x.abs()


def test_randomisation_lowers_the_rank_correlation_on_a_trained_model() -> None:
    model = _trained_bert()
    texts = tiny_text_dataset(n=12, seed=5).x
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = tr.sanity_check(tr.create("input-x-gradient"), model, texts, mode="cascading")
    stages = [s for s, _ in tr.randomization_stages(model)][::-1]
    assert res.stages == stages and res.ssim is None and res.spearman.shape == (len(stages), 12)
    assert res.stages == [
        "classifier",
        "bert.pooler",
        "bert.encoder.layer.1",
        "bert.encoder.layer.0",
        "bert.embeddings",
    ]
    assert res.passed and res.score < 0.5
    first, last = res.spearman[0].mean(), res.spearman[-1].mean()
    assert last < first - 0.2
    # A method blind to the parameters above the embeddings survives everything but the embeddings' re-init.
    fake = tr.sanity_check(WordIdentity(), model, texts, mode="cascading")
    assert fake.spearman[:-1].mean() > 0.99
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    report = tr.sanity_summary({"input-x-gradient": tr.create("input-x-gradient")}, model, texts, modes=("cascading",))
    s = report.results["input-x-gradient"]["cascading"]
    assert s.ssim is None and s.spearman.ci_low <= s.spearman.value <= s.spearman.ci_high


def test_label_randomisation_on_text() -> None:
    data = tiny_text_dataset(n=16, seed=1)
    seen = []

    def recipe(d):  # type: ignore[no-untyped-def]
        seen.append(d)
        return tiny_bert_classifier(num_labels=2, seed=3)

    model = tiny_bert_classifier(num_labels=2, seed=0)
    res = tr.sanity_check(tr.create("saliency"), model, data.x[:4], mode="label", train=recipe, data=data)
    assert res.stages == ["labels"] and res.spearman.shape == (1, 4)
    assert seen[0].modality == "text" and sorted(seen[0].y.tolist()) == sorted(data.y.tolist())
    assert not torch.equal(seen[0].y, data.y)


def test_token_saliency_hooks_an_embedding_layer_for_raw_token_models() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.emb = nn.Embedding(10, 4)
                self.head = nn.Linear(4, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.emb(tokens)).sum(dim=1))

    model = Bag()
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    sal = tr.token_saliency(model, tokens, 1)
    e = model.emb(tokens).detach().requires_grad_(True)
    model.head(torch.tanh(e).sum(dim=1))[:, 1].sum().backward()
    assert e.grad is not None and torch.allclose(sal, e.grad.norm(dim=-1), atol=1e-6)
    assert not model.emb._forward_hooks


def test_bad_text_inputs_raise_one_line_input_errors(bert: nn.Module, tiny_net: nn.Module) -> None:
    with pytest.raises(InputError, match="tokenizer"):
        tr.create("saliency").attribute(tiny_net, ["a text"], 0)  # an image model has no tokenizer
    with pytest.raises(InputError, match="not one str"):
        tr.create("saliency").attribute(bert, "the movie was good", 0)
    with pytest.raises(InputError):
        tr.create("saliency").attribute(bert, ["good", ""], 0)  # an empty text
    with pytest.raises(InputError):
        tr.create("occlusion").attribute(bert, TEXTS, torch.tensor([0, 1]))  # one target too few
    with pytest.raises(InputError, match="text_baseline"):
        tok = bert.tokenizer
        clf = Classifier(bert, tokenizer=_NoPad(tok))
        tr.IntegratedGradients(steps=2).attribute(clf, TEXTS[:1], 0)


class _NoPad:
    """A tokenizer proxy that reports no pad token (IG's [PAD] baseline must then be refused)."""

    def __init__(self, tok: object) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> object:
        return getattr(self._tok, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._tok(*args, **kwargs)  # type: ignore[operator]

    @property
    def pad_token_id(self) -> None:
        return None


def test_a_truncated_text_keeps_the_words_that_remain_with_their_offsets() -> None:
    from tests.support.text import tiny_tokenizer

    tok = tiny_tokenizer("cls", max_length=5)  # [CLS] + 3 words + [SEP]
    texts = ["the movie was really good", "a bad day"]
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    batch = TextBatch(enc["input_ids"], enc["attention_mask"], torch.tensor([True, False]))
    scores = torch.ones(batch.input_ids.shape) * batch.attention_mask
    got = tr.words(tok, texts, batch, scores)
    assert [(w.text, w.start, w.end) for w in got[0]] == [("the", 0, 3), ("movie", 4, 9), ("was", 10, 13)]
    assert [w.text for w in got[1]] == ["a", "bad", "day"]
