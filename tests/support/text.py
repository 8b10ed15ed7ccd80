"""Tiny, offline, seeded text models and data for the tests (hidden size 32, two layers).

Everything here is built in memory: a word-level tokenizer made with ``tokenizers`` (no download), and
randomly initialised ``transformers`` models whose vocabulary is that tokenizer's. Each model carries the
tokenizer as ``model.tokenizer`` so that ``Classifier(model)`` / ``LanguageModel(model, model.tokenizer)``
work without further wiring; nothing global is set.

Example::

    from tests.support.text import tiny_bert_classifier, tiny_text_dataset

    model = tiny_bert_classifier(num_labels=2, seed=0)
    data = tiny_text_dataset(n=32, seed=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from mlsafety.core import TextDataset

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "happy", "love", "excellent", "wonderful", "nice", "fine"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "hate", "terrible", "horrible", "poor", "worse"]
NEUTRAL_WORDS = [
    "the", "a", "an", "movie", "film", "book", "food", "day", "was", "is", "it", "this", "that",
    "very", "quite", "really", "and", "but", "so", "of", "to", "in", "on", "with", "for", "not",
    "i", "you", "we", "they", "he", "she", "cat", "dog", "sat", "mat", "ran", "saw", "big", "small",
    "red", "blue", "one", "two", "three", "yes", "no", "true", "false", "paris", "london", "france",
    "england", "capital", "city", "answer", "question", "q", "a:", "q:", ".", ",", "?", "!",
]  # fmt: skip
VOCAB: list[str] = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
MAX_LENGTH = 64

Template = Literal["cls", "bos", "none"]


def tiny_tokenizer(template: Template = "cls", max_length: int = MAX_LENGTH) -> Any:
    """A ``PreTrainedTokenizerFast`` over :data:`VOCAB` (lower-casing, whitespace split, unknown -> [UNK]).

    Args:
        template: special tokens added around a text: ``"cls"`` gives ``[CLS] ... [SEP]`` (BERT style),
            ``"bos"`` gives ``[BOS] ...`` (causal LM style), ``"none"`` adds nothing.
        max_length: the tokenizer's ``model_max_length`` (truncation limit).

    Returns:
        The tokenizer, with pad ``[PAD]`` (id 0), unk, cls, sep, bos, eos and mask tokens set, right padding.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template == "cls":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    elif template == "bos":
        tok.post_processor = processors.TemplateProcessing(
            single="[BOS] $A", pair="[BOS] $A $B:1", special_tokens=[("[BOS]", vocab["[BOS]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        mask_token="[MASK]",
        model_max_length=max_length,
        padding_side="right",
    )


def _seeded(seed: int, build: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_bert_classifier(num_labels: int = 2, seed: int = 0) -> Any:
    """A random ``BertForSequenceClassification`` (hidden 32, 2 layers, 2 heads), eval mode, ``.tokenizer`` set."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny_tokenizer("cls")
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    model = _seeded(seed, lambda: BertForSequenceClassification(config)).eval()
    model.tokenizer = tokenizer
    return model


def tiny_llama(seed: int = 0) -> Any:
    """A random ``LlamaForCausalLM`` (hidden 32, 2 layers, 4 heads / 2 KV heads), eval mode, ``.tokenizer`` set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer("bos")
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    model = _seeded(seed, lambda: LlamaForCausalLM(config)).eval()
    model.tokenizer = tokenizer
    return model


def tiny_gpt2(seed: int = 0, classifier: bool = False, pad_token_id: int | None = None, n_positions: int = 0) -> Any:
    """A random GPT-2 (hidden 32, 2 layers, 2 heads), eval mode, ``.tokenizer`` set: a ``GPT2LMHeadModel``,
    or with ``classifier`` a two-class ``GPT2ForSequenceClassification`` (last-token pooling, a ``score``
    head). ``pad_token_id`` sets the config's pad id (default: the tokenizer's); ``n_positions`` the
    position table (default: twice the tokenizer's maximum length)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    tokenizer = tiny_tokenizer("bos")
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=n_positions or 2 * MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id if pad_token_id is None else pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=2,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    cls = GPT2ForSequenceClassification if classifier else GPT2LMHeadModel
    model = _seeded(seed, lambda: cls(config)).eval()
    model.tokenizer = tokenizer
    return model


def save_with_tokenizer(model: Any, folder: Path) -> Path:
    """Save a tiny model and its ``.tokenizer`` into ``folder`` (``save_pretrained``: what a user's model folder
    holds); returns ``folder``."""
    model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def tiny_sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 10) -> tuple[list[str], list[int]]:
    """``n`` sentences of neutral words with one sentiment word; label 1 when it is positive, else 0."""
    g = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    labels: list[int] = []
    for _ in range(n):
        length = int(torch.randint(min_words, max_words + 1, (1,), generator=g))
        words = [NEUTRAL_WORDS[int(i)] for i in torch.randint(0, 40, (length,), generator=g)]
        label = int(torch.randint(0, 2, (1,), generator=g))
        pool = POSITIVE_WORDS if label == 1 else NEGATIVE_WORDS
        word = pool[int(torch.randint(0, len(pool), (1,), generator=g))]
        words.insert(int(torch.randint(0, length + 1, (1,), generator=g)), word)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def tiny_text_dataset(n: int = 32, seed: int = 0, name: str = "tiny-text") -> TextDataset:
    """A :class:`~mlsafety.core.TextDataset` of :func:`tiny_sentences` (two classes, a learnable signal)."""
    from mlsafety.core import TextDataset

    texts, labels = tiny_sentences(n, seed)
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), name=name)
