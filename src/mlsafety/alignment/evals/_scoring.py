"""Scoring answer options by a language model's log-probabilities: the primitive of multiple-choice evaluations.

Every option of every question is one (prompt, continuation) pair; all pairs of all questions go through
one call of the scorer's :meth:`~mlsafety.core.LanguageModel.token_logprobs`, which sorts them by length,
batches them with padding and masks the padding (padding never changes a score). The sum of a
continuation's token log-probabilities is its log-likelihood (what TruthfulQA's authors score); the mean
over its tokens is offered for options of very different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from mlsafety.core import InputError, Progress

Reduction = Literal["sum", "mean"]
REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean")


class TokenScorer(Protocol):
    """What option scoring needs of a model: :meth:`mlsafety.core.LanguageModel.token_logprobs`."""

    def token_logprobs(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        batch_size: int = ...,
        progress: Progress | None = ...,
    ) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class OptionScores:
    """Log-probabilities of each question's options: ``sums[q]`` and ``tokens[q]`` are ``(K_q,)`` tensors.

    ``sums`` holds the summed token log-probabilities (natural log) of each option given its prompt,
    ``tokens`` how many tokens each option has.
    """

    sums: list[torch.Tensor]
    tokens: list[torch.Tensor]

    def reduce(self, reduction: Reduction = "sum") -> list[torch.Tensor]:
        """Per question, each option's score: the summed log-probability, or its mean per token."""
        if reduction not in REDUCTIONS:
            raise InputError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if reduction == "sum":
            return list(self.sums)
        return [s / t.clamp(min=1) for s, t in zip(self.sums, self.tokens)]


def score_options(
    lm: TokenScorer,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> OptionScores:
    """Log-probability of every answer option of every question given that question's prompt.

    Args:
        lm: a :class:`~mlsafety.core.LanguageModel` (or anything with its ``token_logprobs``).
        prompts: Q prompts, one per question.
        options: Q lists of answer continuations (each non-empty; a continuation usually starts with a
            space, which the tokenizer then joins to its first word).
        batch_size: (prompt, option) texts per forward pass; all options of all questions are batched
            together, sorted by length.
        progress: shows a bar over the batches; None: silent.

    Returns:
        :class:`OptionScores` with one ``(K_q,)`` tensor of summed log-probabilities and one of token
        counts per question.

    Raises:
        InputError: mismatched lengths, a question without options (and what the model refuses: an empty
            string, a text over its maximum length).

    Example:
        >>> scores = score_options(lm, ["Q: Is fire hot?\\nA:"], [[" Yes.", " No."]])
        >>> scores.reduce("sum")[0]  # tensor([-1.2, -3.4])
    """
    if len(prompts) != len(options):
        raise InputError(f"{len(prompts)} prompts but {len(options)} option lists; give one list per prompt")
    flat_prompts: list[str] = []
    flat_options: list[str] = []
    counts: list[int] = []
    for q, (prompt, opts) in enumerate(zip(prompts, options)):
        if isinstance(opts, str) or len(opts) == 0:
            raise InputError(f"question {q} has no answer options; give each question a list of options")
        flat_prompts += [prompt] * len(opts)
        flat_options += list(opts)
        counts.append(len(opts))
    parts = lm.token_logprobs(flat_prompts, flat_options, batch_size=batch_size, progress=progress)
    sums = torch.stack([p.double().sum() for p in parts]) if parts else torch.empty(0, dtype=torch.float64)
    tokens = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    return OptionScores(list(sums.split(counts)), list(tokens.split(counts)))


def check_fits(lm: Any, items: Sequence[str | Sequence[str]], what: str) -> None:
    """Refuse, in one line, texts longer than the model takes (before any forward pass or stored result).

    ``lm`` is a :class:`~mlsafety.core.LanguageModel` (its ``encode`` flags texts cut at ``max_length``);
    anything without ``encode`` is not checked. Each item is a text or the list of texts one item will be
    scored as (its prompt followed by each answer): every text is checked, since the answer longest in
    characters need not be the longest in tokens; the message names the item.
    """
    encode = getattr(lm, "encode", None)
    if encode is None or not items:
        return
    texts: list[str] = []
    owner: list[int] = []
    for i, item in enumerate(items):
        group = [item] if isinstance(item, str) else list(item)
        texts += group
        owner += [i] * len(group)
    for start in range(0, len(texts), 512):
        batch = encode(texts[start : start + 512])
        if bool(batch.truncated.any()):
            i = owner[start + int(batch.truncated.nonzero()[0])]
            raise InputError(
                f"{what} {i} with one of its answers is longer than the model's {lm.max_length} tokens; "
                "use a model with a longer context, a shorter primer, or drop the long items"
            )
