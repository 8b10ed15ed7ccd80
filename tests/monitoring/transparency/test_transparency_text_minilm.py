"""Token attributions on the embedded MiniLM encoder (its real WordPiece tokenizer) with a seeded head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import Classifier
from mlsafety.monitoring import transparency as tr


class _Sentiment(nn.Module):
    """MiniLM mean-pooled embeddings and a seeded random linear head (a stand-in for any trained head)."""

    def __init__(self) -> None:
        from mlsafety import zoo

        super().__init__()
        self.encoder = zoo.load_model("minilm")
        self.tokenizer = self.encoder.tokenizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.head = nn.Linear(384, 2)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds))


@pytest.mark.slow
def test_minilm_words_completeness_and_cascade() -> None:
    clf = Classifier(_Sentiment().eval())
    texts = ["An unbelievably tedious film.", "A warm, funny and moving story!"]
    res = tr.explain_text(tr.IntegratedGradients(steps=16), clf, texts)
    assert [w.text for w in res.words[0]] == ["An", "unbelievably", "tedious", "film", "."]
    assert max(w.tokens for w in res.words[0]) > 1  # WordPiece cut a word and the merge put it together
    _, delta = tr.IntegratedGradients(steps=16).attribute_with_delta(clf, texts, res.target)
    assert delta.abs().max() < 0.02
    cascade = tr.sanity_check(tr.create("saliency"), clf, texts, mode="cascading")
    assert cascade.stages[0] == "head" and cascade.stages[-1] == "encoder.bert.embeddings"
    assert len(cascade.stages) == 8 and cascade.passed
