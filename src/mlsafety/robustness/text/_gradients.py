"""Gradient helpers of the white-box text attacks (HotFlip, TextGrad, A2T's word importance).

A text model reads token ids through an input-embedding layer; a white-box attack differentiates the
loss with respect to that layer's output (:meth:`mlsafety.core.Classifier.logits_from_embeddings`),
never with respect to the parameters. Three pieces live here:

* :func:`token_spans`: which token positions of a text's encoding each word occupies (a word may be
  several sub-word tokens), from the tokenizer's character offsets;
* :func:`embedding_gradients`: one batched forward and backward pass giving ``(N, L, D)`` gradients of
  the attack loss (cross-entropy, raised for an untargeted attack, lowered towards a target);
* :func:`swap_scores`: the first-order estimate of the loss change when the tokens of one word are
  replaced by another word's, ``sum_t (e_new,t - e_old,t) . grad_t`` (Ebrahimi et al. 2018, eq. 3 in
  its word-level form; Hou et al. 2022 use the same linearisation inside TextGrad's relaxation).

Candidate words enter through their token ids as they read in running text (:func:`word_token_ids`:
with the leading space a word has after another, which is what byte-level BPE and SentencePiece
tokenizers key on); a replacement must have as many tokens as the word it replaces so the estimate
compares like with like (:func:`whole_word_vocabulary` lists the vocabulary entries that are one
whole word each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mlsafety.core import Classifier, InputError, TextBatch, frozen

Span = tuple[int, int]


def token_spans(tokenizer: Any, text: str, char_spans: Sequence[Span], n_tokens: int | None = None) -> list[list[int]]:
    """Token positions (in the text's own encoding, special tokens included) that each word overlaps.

    Args:
        tokenizer: a fast ``transformers`` tokenizer (it must give ``offset_mapping``).
        text: the text as the model reads it.
        char_spans: ``[start, end)`` character span of each word in ``text``.
        n_tokens: tokens the model actually reads (after truncation); positions at or past it are dropped,
            so a word cut off by the maximum length has no positions.

    Returns:
        One sorted list of positions per word (empty when no token overlaps the word).
    """
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True, truncation=False, verbose=False)
    except NotImplementedError:
        raise InputError(
            f"{type(tokenizer).__name__} gives no character offsets; gradient attacks need a fast tokenizer "
            "(transformers' *TokenizerFast)"
        ) from None
    offsets = enc["offset_mapping"]
    limit = len(offsets) if n_tokens is None else min(n_tokens, len(offsets))
    out: list[list[int]] = []
    for start, end in char_spans:
        out.append(
            [j for j in range(limit) if offsets[j][1] > offsets[j][0] and offsets[j][0] < end and offsets[j][1] > start]
        )
    return out


def word_token_ids(tokenizer: Any, words: Sequence[str], leading_space: bool = True) -> list[list[int]]:
    """Token ids of each word as it reads inside a text (after a space when ``leading_space``), no specials."""
    if not words:
        return []
    items = [(" " + w) if leading_space else w for w in words]
    ids = tokenizer(items, add_special_tokens=False, verbose=False)["input_ids"]
    return [list(row) for row in ids]


def whole_word_vocabulary(tokenizer: Any, min_length: int = 2) -> tuple[torch.Tensor, list[str]]:
    """Vocabulary entries that are one alphabetic word each (read after a space): ``(ids (V',), words)``.

    An entry qualifies when it decodes to letters only (at least ``min_length``) and the word, tokenised
    after a space, gives back exactly that one id, so sub-word pieces (``##ing``, word-internal BPE
    merges) and special tokens are left out.
    """
    size = len(tokenizer)
    ids = list(range(size))
    decoded = [str(tokenizer.decode([i])).strip() for i in ids]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    keep = [i for i in ids if i not in special and len(decoded[i]) >= min_length and decoded[i].isalpha()]
    words = [decoded[i] for i in keep]
    back = word_token_ids(tokenizer, words)
    pairs = [(i, w) for i, w, b in zip(keep, words, back) if b == [i]]
    return torch.tensor([i for i, _ in pairs], dtype=torch.long), [w for _, w in pairs]


@dataclass(frozen=True)
class EmbeddingGradients:
    """One batched pass: the batch, its input embeddings, the attack loss's gradient and the logits.

    Attributes:
        batch: the encoded texts (right padding), on the model's device.
        embeddings: ``(N, L, D)`` input embeddings (detached).
        grad: ``(N, L, D)`` gradient of the loss to *raise* (zero on padding).
        logits: ``(N, K)`` (detached).
    """

    batch: TextBatch
    embeddings: torch.Tensor
    grad: torch.Tensor
    logits: torch.Tensor


def embedding_gradients(
    clf: Classifier, texts: Sequence[str], labels: torch.Tensor, targets: torch.Tensor | None = None
) -> EmbeddingGradients:
    """Gradient of the attack loss with respect to each token's input embedding, for a batch at once.

    The loss to raise is the cross-entropy of the true label (untargeted), or minus the cross-entropy of
    ``targets`` (targeted), summed over the batch so each text's gradient is its own. The model runs
    frozen (eval mode, parameter gradients off, restored afterwards).

    Args:
        clf: the text classifier.
        texts: N strings.
        labels: ``(N,)`` true classes.
        targets: ``(N,)`` target classes for a targeted attack, else None.
    """
    batch = clf.encode(list(texts)).to(clf.device)
    with frozen(clf.module):
        emb = clf.embeddings(batch).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = clf.logits_from_embeddings(emb, batch.attention_mask)
            y = labels.to(logits.device)
            if targets is None:
                loss = F.cross_entropy(logits, y, reduction="sum")
            else:
                loss = -F.cross_entropy(logits, targets.to(logits.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, emb)
    grad = grad * batch.attention_mask[..., None].to(grad.dtype)
    return EmbeddingGradients(batch, emb.detach(), grad.detach(), logits.detach())


def swap_scores(grad: torch.Tensor, old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First-order loss change of replacing a word's tokens: ``sum_t (new_t - old_t) . grad_t``.

    Args:
        grad: ``(P, T, D)`` loss gradient at each word's (up to T) token positions.
        old: ``(P, T, D)`` the word's current token embeddings.
        new: ``(P, C, T, D)`` embeddings of C candidate replacements (same token count as the word).
        mask: ``(P, T)`` 1 on the word's real token slots.

    Returns:
        ``(P, C)``: estimated rise of the loss for each (word, candidate); higher is a stronger swap.
    """
    m = mask.to(grad.dtype)[:, None, :, None]
    return ((new - old[:, None]) * grad[:, None] * m).sum(dim=(2, 3))
