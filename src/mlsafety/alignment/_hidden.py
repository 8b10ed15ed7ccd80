"""Hidden states of every layer at an answer's last token, and the answer's log-probability, from one pass.

Probes (Burns et al. 2022, "Discovering Latent Knowledge in Language Models Without Supervision") read
the residual stream at the last token of a prompt completed with an answer; zero-shot scoring compares
the language model's log-probabilities of the answers. Both come from the same forward pass over
``prompt + answer``: the hook points record the residual stream at every layer, the logits score the
answer's tokens. One pass per batch, whatever the number of layers.

Layer indices follow :meth:`mlsafety.core.LanguageModel.hidden_states`: 0 is the stream entering block 0
(after the embeddings), ``i + 1`` the stream leaving block ``i``, all taken before the final norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlsafety.core import InputError, LanguageModel, Progress, TextBatch, encode, track


@dataclass(frozen=True)
class AnswerStates:
    """What one pass over ``prompt + answer`` gives for N texts.

    Attributes:
        hidden: float32 ``(N, n_layers + 1, D)`` on CPU: the residual stream at the answer's last token,
            index 0 after the embeddings, ``i + 1`` after block ``i`` (before the final norm).
        logprob: float32 ``(N,)``: summed natural-log probability of the answer's tokens given the prompt.
        n_answer_tokens: int64 ``(N,)``: how many tokens the answer has in context.
    """

    hidden: torch.Tensor
    logprob: torch.Tensor
    n_answer_tokens: torch.Tensor


def stream_names(n_layers: int) -> list[str]:
    """Hook-point names of the residual stream: ``blocks.0.resid_pre``, then ``blocks.{i}.resid_post``."""
    return ["blocks.0.resid_pre"] + [f"blocks.{i}.resid_post" for i in range(n_layers)]


def check_hidden_access(lm: LanguageModel) -> int:
    """The number of blocks of ``lm``, or one :class:`InputError` line when its hidden states cannot be read."""
    if not isinstance(lm, LanguageModel):
        raise InputError(
            f"probes need a mlsafety.core.LanguageModel (a causal LM and its tokenizer), got {type(lm).__name__}"
        )
    try:
        return lm.n_layers
    except InputError as err:
        raise InputError(f"cannot read this model's hidden states ({err})") from None


def answer_states(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> AnswerStates:
    """Every layer's residual stream at the last token of ``prompt + answer``, and log p(answer | prompt).

    Tokenisation is that of :meth:`LanguageModel.token_logprobs` (whitespace at the end of a prompt moves
    to the start of its answer; the answer's tokens are those of the whole text after the prompt's). Texts
    are sorted by length before batching (less padding) and returned in the caller's order. Padding never
    changes a number: the adapter's attention mask and position ids hide it, and the last real token is
    located from the mask on either padding side.

    Args:
        lm: the language model; it must expose hook points (Llama-style, GPT-2, BERT, or a custom table).
        prompts: N non-empty strings (e.g. ``"Q: Is 2 + 2 = 4? A:"``).
        answers: N non-empty strings (e.g. ``" Yes"``).
        batch_size: texts per forward pass.
        progress: shows a bar over the batches; None: silent.

    Returns:
        :class:`AnswerStates` in the caller's order.

    Raises:
        InputError: mismatched or empty lists, an empty string, a text over the model's maximum length, an
            answer that adds no token after the prompt's, a model without hidden-state access.
    """
    n_layers = check_hidden_access(lm)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(prompts, str) or isinstance(answers, str):
        raise InputError("prompts and answers must be lists of strings, not one string")
    if len(prompts) != len(answers):
        raise InputError(f"{len(prompts)} prompts but {len(answers)} answers; give one answer per prompt")
    if len(prompts) == 0:
        raise InputError("no prompts given; pass at least one prompt and answer")
    pairs: list[tuple[str, str]] = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        stripped = prompt.rstrip()
        if not stripped or not answer.strip():
            raise InputError(f"prompt {i} or its answer is empty; give both some text")
        pairs.append((stripped, prompt[len(stripped) :] + answer))
    names = stream_names(n_layers)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    hidden: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    logprob = torch.empty(len(pairs))
    n_answer = torch.empty(len(pairs), dtype=torch.long)
    side = lm.padding_side
    for start in track(range(0, len(order), batch_size), progress, "hidden states"):
        index = order[start : start + batch_size]
        whole = encode(lm.tokenizer, [pairs[i][0] + pairs[i][1] for i in index], lm.max_length, side)
        head = encode(lm.tokenizer, [pairs[i][0] for i in index], lm.max_length, side)
        _check_whole(whole, head, index, lm.max_length)
        logits, store = lm.run_with_cache(whole, names)  # the one forward pass of this batch
        width, n_whole, n_head = whole.shape[1], whole.lengths, head.lengths
        first = width - n_whole if side == "left" else torch.zeros_like(n_whole)
        last = (first + n_whole - 1).to(logits.device)
        rows = torch.arange(len(index), device=logits.device)
        states = torch.stack([store[name][rows, last] for name in names], dim=1).float().cpu()
        # answer token t is predicted at position t - 1
        pos = torch.arange(width - 1, device=logits.device)[None, :]
        lo = (first + n_head - 1).to(logits.device)[:, None]
        hi = last[:, None]
        scored = (pos >= lo) & (pos < hi)
        targets = whole.input_ids.to(logits.device)[:, 1:][scored]
        # log-softmax only at the answer's positions: the (n, L, V) tensor is never normalised whole
        token_lp = logits[:, :-1][scored].float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        owner = rows[:, None].expand_as(scored)[scored]
        sums = torch.zeros(len(index), device=logits.device).index_add_(0, owner, token_lp).cpu()
        for row, i in enumerate(index):
            hidden[i] = states[row]
            logprob[i] = sums[row]
            n_answer[i] = int(n_whole[row] - n_head[row])
    return AnswerStates(torch.stack(hidden), logprob, n_answer)


def _check_whole(whole: TextBatch, head: TextBatch, index: list[int], max_length: int | None) -> None:
    if bool(whole.truncated.any()):
        i = index[int(whole.truncated.nonzero()[0])]
        raise InputError(
            f"prompt+answer {i} is longer than max_length={max_length or 'the tokenizer limit'} tokens; shorten it"
        )
    for row, i in enumerate(index):
        p, w = int(head.lengths[row]), int(whole.lengths[row])
        p_ids = head.input_ids[row][head.attention_mask[row].bool()]
        w_ids = whole.input_ids[row][whole.attention_mask[row].bool()]
        if w <= p or not torch.equal(p_ids, w_ids[:p]):
            raise InputError(
                f"prompt {i}'s tokens are not followed by answer tokens in prompt+answer (a token spans the "
                "boundary or the tokenizer appends a special token): split prompt and answer at a word boundary"
            )
