"""Token saliency: attribution methods on text, and their scores read as words.

Text models take integer token ids, which have no gradient; the gradient of the target logit with
respect to each token's *embedding* does (Li et al., "Visualizing and Understanding Neural Models in
NLP", 2016; Denil et al. 2014). Every method tagged ``text`` explains text through
``Attribution.attribute``; :func:`explain_text` adds the words, and :func:`token_saliency` serves
models that take raw token ids (no tokenizer) by hooking their embedding layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, ModelLike, TextBatch, Texts, as_classifier, forward, frozen
from mlsafety.monitoring.transparency.base import (
    Attribution,
    InputSpace,
    Target,
    resolve_target,
)
from mlsafety.monitoring.transparency.input_x_gradient import InputXGradient
from mlsafety.monitoring.transparency.saliency import Saliency
from mlsafety.monitoring.transparency.words import Word, words

REDUCTIONS = ("norm", "grad-x-input")


@dataclass(frozen=True)
class TextAttributions:
    """One method's explanation of a batch of texts.

    Attributes:
        method: the attribution method's name.
        texts: the texts (N).
        batch: their encoding by the classifier.
        scores: token scores (N, L) aligned with ``batch``, zero at padding.
        target: the explained class of each text (N,).
        words: per text, its words with their summed scores (special tokens and padding left out).
    """

    method: str
    texts: list[str]
    batch: TextBatch
    scores: torch.Tensor
    target: torch.Tensor
    words: list[list[Word]]


def explain_text(
    method: Attribution, model: ModelLike, texts: Texts | Sequence[str], target: Target | None = None
) -> TextAttributions:
    """Explain ``texts`` with ``method`` and merge the token scores into words.

    Args:
        method: an attribution method tagged ``text``.
        model: a text classifier (a :class:`~mlsafety.core.Classifier` with a tokenizer, or a module
            with ``.tokenizer``); left unchanged.
        texts: the texts (N).
        target: class to explain for all or per text (default: the model's predictions).
    """
    clf = as_classifier(model)
    tokenizer = getattr(clf, "tokenizer", None)
    if tokenizer is None:
        raise InputError("explaining text needs a tokenizer: pass Classifier(model, tokenizer=...)")
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one str; wrap it: [text]")
    items = list(texts)
    batch = clf.encode(items)
    tgt = (
        forward(clf, Texts(items), features=False).pred.cpu()
        if target is None
        else resolve_target(target, len(items), torch.device("cpu"))
    )
    scores = method.attribute(clf, batch, tgt)
    return TextAttributions(method.name, items, batch, scores, tgt, words(tokenizer, items, batch.to("cpu"), scores))


class _HookSpace(InputSpace):
    """Embedding space of a model that takes raw token ids: a forward hook swaps the embedding
    layer's output for the embeddings being differentiated."""

    def __init__(self, clf: Classifier, layer: nn.Module, tokens: torch.Tensor) -> None:
        super().__init__(clf, torch.ones(tokens.shape, dtype=torch.long, device=tokens.device))
        self.layer, self.tokens = layer, tokens

    def logits(self, x: torch.Tensor | TextBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
        assert isinstance(x, torch.Tensor)
        tokens = self.tokens if rows is None else self.tokens[rows]

        def swap(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            return x

        handle = self.layer.register_forward_hook(swap)
        try:
            return self.clf.logits(tokens)
        finally:
            handle.remove()


def find_embedding(model: nn.Module, name: str | None = None) -> nn.Module:
    """The submodule ``name``, or the model's first ``nn.Embedding`` (or ``nn.EmbeddingBag``)."""
    named = dict(model.named_modules())
    if name is not None:
        if name not in named:
            raise InputError(f"model has no submodule named {name!r}; pass embedding= one of its module names")
        return named[name]
    for module in named.values():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            return module
    raise InputError("model has no nn.Embedding layer; pass embedding= naming the layer that embeds the tokens")


def token_saliency(
    model: ModelLike,
    tokens: torch.Tensor,
    target: Target,
    embedding: str | None = None,
    reduce: str = "norm",
) -> torch.Tensor:
    """Saliency of each token (N, L) for the logit of class ``target``, for a model taking raw token ids.

    A thin function over :class:`Saliency` (``norm``: the gradient's L2 norm) and
    :class:`InputXGradient` (``grad-x-input``: gradient . embedding) for modules whose forward takes
    a tensor of token ids; text classifiers with a tokenizer use ``create(name).attribute(model, texts, target)``.

    Args:
        model: a classifier whose forward takes token ids (N, L) and returns logits (N, K).
        tokens: integer token ids (N, L).
        target: class index for all inputs or one per input (N,).
        embedding: name of the embedding submodule (default: the first ``nn.Embedding``). Its output
            must be (N, L, D).
        reduce: ``norm`` or ``grad-x-input``.

    The forward hook on the embedding layer is removed before returning, also on error.
    """
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    if tokens.is_floating_point() or tokens.ndim != 2:
        raise InputError(f"tokens must be integer ids of shape (N, L), got {tokens.dtype} {tuple(tokens.shape)}")
    clf = as_classifier(model)
    layer = find_embedding(clf.module, embedding)
    device = clf.device
    ids = tokens.to(device)
    tgt = resolve_target(target, tokens.shape[0], device)
    method: Attribution = Saliency() if reduce == "norm" else InputXGradient()
    with frozen(clf.module):
        with torch.no_grad():
            emb = layer(ids)
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3 or emb.shape[:2] != tokens.shape:
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise InputError(f"embedding output must be (N, L, D) for tokens {tuple(tokens.shape)}, got {shape}")
        with torch.enable_grad():
            out = method.attribute_embeddings(_HookSpace(clf, layer, ids), emb.detach().clone(), tgt)
    return out.detach().to(tokens.device)
