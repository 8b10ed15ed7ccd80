"""Embedded text data and language models, read from the installed assets (see :mod:`mlsafety.zoo._assets`).

Datasets (Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
Media Text", ICWSM 2014; from the ``vaderSentiment==3.3.2`` sdist, MIT). Every sentence carries the
mean of about 20 human sentiment ratings in [-4, 4]; the labels below come from those ratings, not
from a model.

``mr`` (in-distribution, 2 classes)
    the Rotten Tomatoes movie-review sentences of the MR benchmark (Pang & Lee, 2005; the file's first
    line is MR's first sentence) whose |mean rating| >= 0.5 (the near-neutral ones are dropped);
    label 1 when the rating is positive, else 0. Split: a permutation drawn with
    ``mlsafety.core.generator(0, "mr-split")``, cut into train (first 60%), val (next 20%) and test
    (last 20%); ``all`` is the whole permutation.
``tweets`` (near-OOD)
    tweets: short, informal and sentiment-bearing like the reviews, but social media, not film.
``amazon`` (near-OOD)
    Amazon product-review sentences: reviews and sentiment-bearing, but of products, not films.
``nyt`` (far-OOD)
    New York Times opinion-piece sentences: news prose on politics and society, mostly close to
    neutral (43% have |rating| < 0.5, against 5% of the movie sentences): neither reviews nor the
    sentiment task's usual register, so the farthest of the three.

The OOD sets keep every sentence (their ratings are not used; ``y = -1``) and are split 60/20/20 the
same way (``generator(0, "<name>-split")``), so ``train`` can serve outlier exposure and ``test``
the evaluation. Text is decoded as UTF-8 (a line's CRLF is dropped) and HTML entities are unescaped
(``&amp;`` -> ``&``; the NYT file escapes some twice, so unescaping repeats until nothing changes).

Models

``minilm``
    :class:`SentenceEncoder`: sentence-transformers all-MiniLM-L6-v2 (Reimers & Gurevych,
    "Sentence-BERT", 2019; Wang et al., "MiniLM", 2020): a 6-layer BERT, mean pooling over the
    attention mask, (N, 384) sentence embeddings (BERT's pooler, unused, is left out).
``smollm2-135m``
    SmolLM2-135M-Instruct (Allal et al., 2025) as a ``LlamaForCausalLM`` in fp32: its 4-bit (Q4_1)
    quantised weights dequantised to fp32, not the original bf16 release. Read from the GGUF once
    and cached as ``.safetensors`` under ``<assets>/smollm2/cache``; the cache records the pinned
    GGUF's SHA-256 and every one of its files' SHA-256, and loading checks them all.
"""

from __future__ import annotations

import copy
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mlsafety.core import InputError, TextDataset, generator
from mlsafety.zoo._assets import (
    ASSETS,
    INSTALL_HINT,
    WRITE_HINT,
    asset_dir,
    asset_file,
    asset_info,
    sha256_file,
    verify_file,
)
from mlsafety.zoo._datasets import SPLIT_FRACTIONS, DatasetInfo, register_dataset
from mlsafety.zoo._models import ModelInfo, register_model

if TYPE_CHECKING:
    from mlsafety.core import LanguageModel

_HUTTO = ASSETS["hutto"]
_HUTTO_SOURCE = f"{_HUTTO.requirement} ({_HUTTO.licence})"

# --- data -----------------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    while (plain := html.unescape(text)) != text:
        text = plain
    return text


def read_rated_sentences(path: Path) -> tuple[list[str], torch.Tensor]:
    """The sentences and mean ratings of one ``*_GroundTruth.txt`` file (``id<TAB>rating<TAB>sentence``).

    Returns:
        the sentences (UTF-8, CRLF dropped, HTML entities unescaped, stripped) and their ratings as
        float64 (N,), in file order.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 (byte {exc.start}); reinstall it: {INSTALL_HINT}") from None
    sentences: list[str] = []
    ratings: list[float] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise InputError(
                f"{path}:{number}: expected id<TAB>rating<TAB>sentence; reinstall it: {INSTALL_HINT}"
            ) from None
        sentence = _unescape(parts[2]).strip() if len(parts) == 3 else ""
        if not sentence:
            raise InputError(f"{path}:{number}: empty sentence; reinstall it: {INSTALL_HINT}")
        sentences.append(sentence)
        ratings.append(rating)
    return sentences, torch.tensor(ratings, dtype=torch.float64)


def split_index(n: int, name: str, split: str) -> torch.Tensor:
    """Rows of ``split`` (``train``/``val``/``test``/``all``) in the fixed 60/20/20 permutation of ``name``."""
    perm = torch.randperm(n, generator=generator(0, f"{name}-split"))
    a = round(SPLIT_FRACTIONS[0] * n)
    b = a + round(SPLIT_FRACTIONS[1] * n)
    parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:], "all": perm}
    if split not in parts:
        raise InputError(f"{name} has splits train, val, test and all, not {split!r}")
    return parts[split]


MR_MIN_ABS_RATING = 0.5
"""``mr`` keeps the sentences whose |mean rating| is at least this (the near-neutral ones are dropped)."""


def _no_shape(name: str, shape: object) -> None:
    if shape is not None:
        raise InputError(f"{name} is a text set; it takes no shape (leave shape out)")


def _mr(split: str = "test", shape: tuple[int, int, int] | None = None) -> TextDataset:
    _no_shape("mr", shape)
    path = asset_file("hutto", "movieReviewSnippets_GroundTruth.txt")
    sentences, ratings = read_rated_sentences(path)
    keep = (ratings.abs() >= MR_MIN_ABS_RATING).nonzero().flatten()
    labels = (ratings[keep] > 0).long()
    idx = split_index(len(keep), "mr", split)
    texts = [sentences[i] for i in keep[idx].tolist()]
    info = _DATASETS["mr"]
    return TextDataset(texts, labels[idx], name="mr", kind="in", description=info.description, source=info.source)


def _ood_maker(name: str, file: str) -> Any:
    def make(split: str = "test", shape: tuple[int, int, int] | None = None) -> TextDataset:
        _no_shape(name, shape)
        sentences, _ = read_rated_sentences(asset_file("hutto", file))
        idx = split_index(len(sentences), name, split)
        info = _DATASETS[name]
        texts = [sentences[i] for i in idx.tolist()]
        y = torch.full((len(texts),), -1, dtype=torch.int64)
        return TextDataset(texts, y, name=name, kind=info.kind, description=info.description, source=info.source)

    return make


_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "mr",
            "in",
            "Rotten Tomatoes review sentences, label = sign of the mean human rating (|rating| >= 0.5), "
            "train/val/test 60/20/20",
            _mr,
            modality="text",
            size="10,072 rows",
            source=_HUTTO_SOURCE,
        ),
        DatasetInfo(
            "tweets",
            "near",
            "near-OOD text: tweets (sentiment-bearing, another domain), split 60/20/20",
            _ood_maker("tweets", "tweets_GroundTruth.txt"),
            modality="text",
            size="4,200 rows",
            source=_HUTTO_SOURCE,
        ),
        DatasetInfo(
            "amazon",
            "near",
            "near-OOD text: Amazon product-review sentences, split 60/20/20",
            _ood_maker("amazon", "amazonReviewSnippets_GroundTruth.txt"),
            modality="text",
            size="3,708 rows",
            source=_HUTTO_SOURCE,
        ),
        DatasetInfo(
            "nyt",
            "far",
            "far-OOD text: New York Times opinion sentences (news prose, mostly neutral), split 60/20/20",
            _ood_maker("nyt", "nytEditorialSnippets_GroundTruth.txt"),
            modality="text",
            size="5,190 rows",
            source=_HUTTO_SOURCE,
        ),
    )
}

for _info in _DATASETS.values():
    register_dataset(_info)

# --- models ---------------------------------------------------------------------------------------


def _transformers() -> Any:
    """``transformers``, imported with the Hugging Face hub switched offline (the library never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers


MINILM_MAX_LENGTH = 256
"""all-MiniLM-L6-v2's training length (its ``sentence_bert_config.json``); longer texts are truncated."""


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (N, L, D) over the positions where ``attention_mask`` (N, L) is 1 -> (N, D)."""
    mask = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class SentenceEncoder(nn.Module):
    """A BERT encoder with mean pooling over the attention mask: texts -> (N, D) sentence embeddings.

    The pooling of Sentence-BERT (Reimers & Gurevych, "Sentence-BERT: Sentence Embeddings using
    Siamese BERT-Networks", 2019): the last hidden states of the real (unmasked) tokens, averaged.
    sentence-transformers' all-MiniLM-L6-v2 then L2-normalises; ``normalize=True`` does the same (the
    zoo's ``minilm`` leaves it off, so a head sees the raw mean; cosine similarities agree either way).

    Args:
        bert: a ``transformers`` encoder (``BertModel``) returning ``last_hidden_state``.
        tokenizer: its tokenizer (attached as ``.tokenizer`` so ``Classifier`` and ``forward`` find it).
        normalize: L2-normalise the pooled embedding.

    Called as ``encoder(input_ids=..., attention_mask=...)`` (or ``inputs_embeds=`` instead of the
    ids, for gradients over embeddings; ``token_type_ids`` as a BERT tokenizer returns them);
    returns float (N, hidden).
    """

    def __init__(self, bert: nn.Module, tokenizer: Any = None, normalize: bool = False) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.normalize = normalize

    def get_input_embeddings(self) -> nn.Module:
        """The word-embedding layer (what gradient methods over embeddings perturb)."""
        layer: nn.Module = self.bert.get_input_embeddings()  # type: ignore[operator]
        return layer

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
        )
        hidden = out.last_hidden_state
        mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
        pooled = mean_pool(hidden, mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


_UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
"""Checkpoint entries the encoder does not use: BERT's pooler (mean pooling replaces it) and a buffer."""


def load_minilm(normalize: bool = False) -> SentenceEncoder:
    """The ``minilm`` encoder from the installed assets (every file's SHA-256 checked), in eval mode.

    The BERT is built without its pooler (unused by mean pooling: 22.6M parameters rather than the
    checkpoint's 22.7M) and every other checkpoint tensor must match it (``strict`` loading).
    """
    from safetensors.torch import load_file

    folder = asset_dir("minilm")
    for f in ASSETS["minilm"].files:
        asset_file("minilm", f.name)
    tf = _transformers()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.model_max_length = MINILM_MAX_LENGTH
    with torch.random.fork_rng(devices=[]):  # the throw-away initial weights leave the caller's RNG alone
        bert = tf.BertModel(tf.BertConfig.from_json_file(str(folder / "config.json")), add_pooling_layer=False)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k not in _UNUSED_KEYS}
    bert.load_state_dict(state, strict=True)
    return SentenceEncoder(bert, tokenizer, normalize=normalize).eval()


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_META = "mlsafety-cache.json"
CACHE_FORMAT = 2
"""Version of ``mlsafety-cache.json``: 2 records every cache file's SHA-256 (1 recorded only the weights')."""
_CACHE_WEIGHTS = "model.safetensors"
_CACHE_REQUIRED = ("config.json", _CACHE_WEIGHTS, "tokenizer.json", "tokenizer_config.json")
"""Files a cache must record: what ``from_pretrained`` reads for the model and its tokenizer."""
_CACHE_OWNER = "smollm2-135m's cache"


def smollm2_cache_dir(root: Path | None = None) -> Path:
    """Where the fp32 ``.safetensors`` conversion of SmolLM2's GGUF is cached (under the asset ``root``)."""
    return asset_dir("smollm2", root) / "cache"


def _pinned_gguf_sha256() -> str:
    return asset_info("smollm2").file(SMOLLM2_GGUF).sha256


def _cache_meta(cache: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((cache / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _cache_stale(cache: Path) -> str | None:
    """Why the cache must be (re)made from the GGUF (missing, older format, another GGUF), else None."""
    meta = _cache_meta(cache)
    if meta is None:
        return f"{cache / CACHE_META} is missing or unreadable"
    if meta.get("format") != CACHE_FORMAT or not isinstance(meta.get("files"), dict):
        return f"{cache / CACHE_META} is in an older format"
    if meta.get("gguf_sha256") != _pinned_gguf_sha256():
        return f"{cache} was made from another GGUF than the pinned {SMOLLM2_GGUF}"
    return None


def _cache_tampered(cache: Path) -> str | None:
    """The one-line reason a current-format cache's files differ from its metadata, else None.

    Every file in the folder but the metadata must be recorded there, the recorded set must include
    the model's and tokenizer's files, and each file's SHA-256 must match the recorded one.
    """
    files: dict[str, Any] = (_cache_meta(cache) or {}).get("files") or {}
    fix = f"reinstall it: {INSTALL_HINT}"
    for name in _CACHE_REQUIRED:
        if name not in files:
            return f"{cache / CACHE_META} records no SHA-256 for {name}; {fix}"
    present = {f.name for f in cache.iterdir()} - {CACHE_META}
    if extra := sorted(present - set(files)):
        return f"{cache / extra[0]} is not recorded in {cache / CACHE_META}; {fix}"
    for name, digest in sorted(files.items()):
        path = cache / name
        if name not in present or not path.is_file():
            return f"{path} is missing from {_CACHE_OWNER}; {fix}"
        try:
            verify_file(path, str(digest), _CACHE_OWNER)
        except InputError as exc:
            return str(exc)
    return None


def smollm2_cache_ready(root: Path | None = None) -> bool:
    """Whether the cache was made from the pinned GGUF and every file matches the SHA-256 it recorded."""
    cache = smollm2_cache_dir(root)
    return cache.is_dir() and _cache_stale(cache) is None and _cache_tampered(cache) is None


def _read_gguf(gguf: Path) -> tuple[Any, Any]:
    """The model (fp32, dequantised) and tokenizer in the GGUF file ``gguf`` (the slow part, ~60 s)."""
    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    return model, tokenizer


def convert_smollm2(root: Path | None = None) -> Path:
    """Read SmolLM2's GGUF (dequantised to fp32) and write the cache, atomically; returns its folder.

    Args:
        root: the asset root (default :func:`~mlsafety.zoo.asset_root`).

    The cache holds ``config.json``, ``model.safetensors`` (fp32; the tied output embedding is
    stored once), the tokenizer's files and ``mlsafety-cache.json``: the pinned GGUF's SHA-256, the
    SHA-256 of every other file in the cache and the ``transformers`` version that converted them.
    """
    from safetensors.torch import save_file

    cache = smollm2_cache_dir(root)
    gguf = asset_file("smollm2", SMOLLM2_GGUF, root)
    try:  # before the slow read: an unwritable install fails at once
        tmp = Path(tempfile.mkdtemp(prefix=".cache-", dir=cache.parent))
    except OSError as exc:
        raise InputError(f"cannot write SmolLM2's cache to {cache.parent} ({exc.strerror}); {WRITE_HINT}") from None
    try:
        model, tokenizer = _read_gguf(gguf)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):  # the cache is plain fp32: no GGUF quantiser on load
            del config.quantization_config
        config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        save_file(state, str(tmp / _CACHE_WEIGHTS), metadata={"format": "pt"})
        written = sorted(tmp.iterdir())
        if any(not f.is_file() for f in written):
            raise InputError(f"the conversion wrote a folder into {tmp}; the cache holds plain files only")
        for f in written:
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is read by every user of the install
        meta = {
            "format": CACHE_FORMAT,
            "gguf": SMOLLM2_GGUF,
            "gguf_sha256": _pinned_gguf_sha256(),
            "files": {f.name: sha256_file(f) for f in written},
            "dtype": "float32",
            "transformers": _transformers().__version__,
            "note": "4-bit (Q4_1) quantised weights dequantised to fp32, not the original bf16 release",
        }
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CACHE_META).chmod(0o644)
        if cache.exists():
            old = Path(tempfile.mkdtemp(prefix=".cache-old-", dir=cache.parent))
            cache.rename(old / "cache")
            tmp.rename(cache)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def load_smollm2() -> nn.Module:
    """``smollm2-135m``: a ``LlamaForCausalLM`` in fp32 from the cache (made from the GGUF on first use).

    A cache that is missing, in an older format or made from another GGUF than the pinned one is
    (re)made from the GGUF; a cache whose files differ from the SHA-256s it recorded is refused
    (one line naming the file). The model carries its tokenizer as ``.tokenizer``. Its weights are
    SmolLM2-135M-Instruct's 4-bit (Q4_1) quantised weights dequantised to fp32, not the original
    bf16 release.
    """
    cache = smollm2_cache_dir()
    if not cache.is_dir() or _cache_stale(cache) is not None:
        convert_smollm2()
    if (stale := _cache_stale(cache)) is not None:
        raise InputError(f"{stale}; reinstall it: {INSTALL_HINT}")
    if (problem := _cache_tampered(cache)) is not None:
        raise InputError(problem)
    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(str(cache), local_files_only=True, dtype=torch.float32)
    model.tokenizer = tf.AutoTokenizer.from_pretrained(str(cache), local_files_only=True)
    module: nn.Module = model.eval()
    return module


def load_language_model(name: str = "smollm2-135m") -> LanguageModel:
    """A zoo causal LM wrapped in :class:`mlsafety.core.LanguageModel` (tokeniser attached)."""
    from mlsafety.core import LanguageModel
    from mlsafety.zoo._models import load_model, model_info

    info = model_info(name)
    if info.role != "causal-lm":
        raise InputError(f"zoo model {name!r} is a {info.role}, not a causal language model; use smollm2-135m")
    module = load_model(name)
    return LanguageModel(module, module.tokenizer)  # type: ignore[arg-type]


_SMOL = ASSETS["smollm2"]
_MINI = ASSETS["minilm"]

register_model(
    ModelInfo(
        "minilm",
        "sentence encoder all-MiniLM-L6-v2 (6-layer BERT, mean pooling -> 384), frozen, pretrained",
        load_minilm,
        None,
        "",
        modality="text",
        size="22.6M params",
        source=f"{_MINI.requirement} (Apache-2.0)",
        load=load_minilm,
        role="encoder",
    )
)
register_model(
    ModelInfo(
        "smollm2-135m",
        "causal LM SmolLM2-135M-Instruct (Llama, 30 layers): 4-bit (Q4_1) quantised weights dequantised to "
        "fp32, not the original bf16 release",
        load_smollm2,
        None,
        "",
        modality="text",
        size="134.5M params",
        source=f"{_SMOL.requirement} ({_SMOL.licence})",
        load=load_smollm2,
        role="causal-lm",
    )
)
