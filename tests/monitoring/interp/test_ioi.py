"""The IOI prompt generator: seeded, token-aligned ABC pairs, names found where they are, single tokens enforced."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from mlsafety.core import InputError, LanguageModel
from mlsafety.monitoring.interp.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, ioi_dataset

SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
TEST_NAMES = ["john", "mary", "tom", "kate", "sid", "anna", "paul", "lisa", "mark", "amy"]
"""Names the test tokenizer knows (lower-cased, so ``" John"`` is the single token ``john``)."""


def _template_words() -> list[str]:
    words: list[str] = []
    for t in TEMPLATES:
        text = re.sub(r"\{\w+\}", " ", t).lower()
        words += re.findall(r"\w+|[^\w\s]", text)
    return list(dict.fromkeys(words))


IOI_VOCAB = list(dict.fromkeys(SPECIAL + _template_words() + TEST_NAMES + [w.lower() for w in PLACES + OBJECTS]))


def ioi_tokenizer() -> Any:
    """A word-level tokenizer (lower-cased, punctuation split off, ``[BOS]`` first) that knows the IOI words."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(IOI_VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B:1", special_tokens=[("[BOS]", vocab["[BOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=64,
        padding_side="right",
    )


def _seeded(seed: int, build: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def ioi_llama(seed: int = 0) -> LanguageModel:
    """A random Llama (hidden 32, 2 layers, 4 query heads / 2 KV heads: GQA) over :data:`IOI_VOCAB`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = ioi_tokenizer()
    config = LlamaConfig(
        vocab_size=len(IOI_VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        attn_implementation="sdpa",
    )
    return LanguageModel(_seeded(seed, lambda: LlamaForCausalLM(config)).eval(), tokenizer)


def ioi_gpt2(seed: int = 0) -> LanguageModel:
    """A random GPT-2 (hidden 32, 2 layers, 2 heads) over :data:`IOI_VOCAB`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = ioi_tokenizer()
    config = GPT2Config(
        vocab_size=len(IOI_VOCAB),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        attn_implementation="sdpa",
    )
    return LanguageModel(_seeded(seed, lambda: GPT2LMHeadModel(config)).eval(), tokenizer)


def test_same_seed_same_prompts_and_another_seed_others() -> None:
    tok = ioi_tokenizer()
    a, b, c = ioi_dataset(tok, n=24, seed=3), ioi_dataset(tok, n=24, seed=3), ioi_dataset(tok, n=24, seed=4)
    assert a.prompts == b.prompts and a.corrupted == b.corrupted
    assert torch.equal(a.io_ids, b.io_ids) and torch.equal(a.positions["S2"], b.positions["S2"])
    assert a.prompts != c.prompts
    assert a.orders.count("ABBA") == a.orders.count("BABA") == 12
    assert len(set(a.templates)) > 4


def test_pairs_have_equal_length_and_names_sit_at_their_positions() -> None:
    tok = ioi_tokenizer()
    data = ioi_dataset(tok, n=40, seed=0)
    assert set(TEST_NAMES) >= {n.lower() for n in data.io_names + data.s_names}
    for i, (clean, abc) in enumerate(zip(data.prompts, data.corrupted)):
        ids = tok(clean)["input_ids"]
        abc_ids = tok(abc)["input_ids"]
        assert len(ids) == len(abc_ids) == int(data.lengths[i])
        io, s1, s2, end = (int(data.positions[k][i]) for k in ("IO", "S1", "S2", "END"))
        assert ids[io] == int(data.io_ids[i]) and ids[s1] == ids[s2] == int(data.s_ids[i])
        assert end == len(ids) - 1 and s1 < s2 and io < s2
        assert (io < s1) == (data.orders[i] == "ABBA")
        # the ABC prompt: the same template with three other names at the same three places
        abc_names = {abc_ids[io], abc_ids[s1], abc_ids[s2]}
        assert len(abc_names) == 3 and not abc_names & {int(data.io_ids[i]), int(data.s_ids[i])}
        same = [j for j in range(len(ids)) if j not in (io, s1, s2)]
        assert [ids[j] for j in same] == [abc_ids[j] for j in same]
        assert not clean.endswith(" ") and clean.split()[-1] in ("to",)


def test_default_names_are_filtered_to_single_tokens() -> None:
    tok = ioi_tokenizer()
    data = ioi_dataset(tok, n=8, seed=1)
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in data.io_names)
    assert len(NAMES) > len(TEST_NAMES)  # the filter dropped most of the defaults


def test_a_multi_token_name_is_refused_in_one_line() -> None:
    tok = ioi_tokenizer()
    with pytest.raises(InputError) as info:
        ioi_dataset(tok, n=4, names=["john", "mary", "tom", "kate", "sid", "mary ann", "zebediah"])
    message = str(info.value)
    assert "\n" not in message and "'mary ann'" in message and "'zebediah'" in message and "'john'" not in message
    with pytest.raises(InputError, match="at least 5"):
        ioi_dataset(tok, n=4, names=["john", "mary", "tom"])
    with pytest.raises(InputError, match="places"):
        ioi_dataset(tok, n=4, places=["spaceship"])


def test_a_malformed_template_is_refused() -> None:
    tok = ioi_tokenizer()
    with pytest.raises(InputError, match="template 0"):
        ioi_dataset(tok, n=2, templates=["Then, {A} went to the {PLACE}. {C} gave a {OBJECT} to"])
    with pytest.raises(InputError, match="whitespace"):
        ioi_dataset(tok, n=2, templates=["Then, {A} and {B} left. {C} gave it to "])


@pytest.mark.parametrize(
    "template",
    [
        "Then, {A} and {B} went to the {PLAC}. {C} gave it to",  # a misspelt field: a KeyError traceback before
        "Then, {A} and {B} went to the {}. {C} gave it to",  # an empty field: an IndexError
        "Then, {A} and {B} went to the {PLACE. {C} gave it to",  # an unclosed brace: a ValueError
        "Then, {A} and {B} went to the {PLACE!r}. {C} gave it to",  # a conversion would change the word
    ],
)
def test_a_template_with_an_unknown_or_broken_field_is_refused_in_one_line(template: str) -> None:
    with pytest.raises(InputError, match="template 0") as info:
        ioi_dataset(ioi_tokenizer(), n=2, templates=[template])
    assert "\n" not in str(info.value) and "{PLACE}" in str(info.value)
