"""A text classifier with a known linear decision rule in embedding space, for the white-box text attacks.

:class:`MeanEmbeddingClassifier` averages its input embeddings over the attention mask and applies a
linear head, so the logit change of swapping one token for another is exactly linear in the two
embeddings: a first-order (gradient) estimate of a swap is exact up to the softmax's monotone factor,
and the minimal flip can be computed by hand. :func:`sentiment_model` sets embedding coordinate 0 to a
word's sentiment strength (positive words > 0, negative < 0, the rest 0) and reads class 1 from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.support.text import NEGATIVE_WORDS, POSITIVE_WORDS, VOCAB, tiny_tokenizer


class MeanEmbeddingClassifier(nn.Module):
    """Embedding -> mean over real tokens -> Linear; takes ``input_ids`` or ``inputs_embeds``."""

    def __init__(self, vocab_size: int, dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.fc = nn.Linear(dim, num_classes)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        m = attention_mask.to(emb.dtype)[..., None]
        pooled = (emb * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        return self.fc(pooled)  # type: ignore[no-any-return]


STRENGTH: dict[str, float] = {
    **{w: 1.0 + 0.25 * i for i, w in enumerate(POSITIVE_WORDS)},
    **{w: -(1.0 + 0.25 * i) for i, w in enumerate(NEGATIVE_WORDS)},
}
"""Sentiment of each sentiment word (all distinct, so the best swap is unique)."""


def sentiment_model(dim: int = 4, seed: int = 0) -> Any:
    """A :class:`MeanEmbeddingClassifier` over the tiny vocabulary whose class-1 logit is the mean
    sentiment (coordinate 0 of each embedding; the other coordinates are random and unread), class 0's
    logit is 0; ``.tokenizer`` is the tiny word-level tokenizer (``[CLS] ... [SEP]``, embeddings 0)."""
    tok = tiny_tokenizer("cls")
    model = MeanEmbeddingClassifier(len(VOCAB), dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.embed.weight.copy_(torch.randn(len(VOCAB), dim, generator=g) * 0.5)
        model.embed.weight[:, 0] = 0.0
        for w, s in STRENGTH.items():
            model.embed.weight[VOCAB.index(w), 0] = s
        for special in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
            model.embed.weight[VOCAB.index(special)] = 0.0
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0] = 1.0
    model.tokenizer = tok
    return model.eval()


def sentiment(text: str) -> float:
    """The sum of the sentiment strengths of ``text``'s words (class 1 exactly when positive)."""
    return sum(STRENGTH.get(w, 0.0) for w in text.lower().split())
