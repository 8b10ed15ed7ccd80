"""The logit lens: decode the residual stream after every layer with the model's own final norm and unembedding.

nostalgebraist (2020, "interpreting GPT: the logit lens") reads each layer's residual stream as if it were the
last one: ``unembed(final_norm(resid))``. Unlike the original, which used GPT-2's ``ln_f`` and unembedding by
hand, this works on any model with hook points by applying the modules the model itself uses
(``final_norm`` of :class:`~mlsafety.core.HookPoints` and ``get_output_embeddings()``), so the last row is the
model's own prediction. No tuned-lens translators (Belrose et al., 2023) are fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlsafety.core import InputError, LanguageModel, frozen
from mlsafety.monitoring.interp._common import Answers, answer_ids, as_lm, chunks, encode_left, forward_last
from mlsafety.monitoring.interp.metrics import t_interval


@dataclass(frozen=True)
class LogitLensResult:
    """Per-layer decoded predictions at one position.

    Attributes:
        layers: the residual streams read, in order: ``blocks.{i}.resid_pre`` for every block, then the last
            block's ``resid_post`` (whose lens is the model's output).
        top_ids: ``(layers, N, k)`` the top-k token ids per layer and prompt.
        top_tokens: ``[layer][prompt][k]`` the same, decoded.
        top_logprobs: ``(layers, N, k)`` their log-probabilities.
        target_logprob: ``(layers, N)`` the target token's log-probability (None without targets).
        target_rank: ``(layers, N)`` its rank, 0 = top (None without targets).
        target_mean, target_low, target_high: ``(layers,)`` the mean target log-probability over prompts
            with a Student-t 95% interval (None without targets).
    """

    layers: list[str]
    top_ids: torch.Tensor
    top_tokens: list[list[list[str]]]
    top_logprobs: torch.Tensor
    target_logprob: torch.Tensor | None = None
    target_rank: torch.Tensor | None = None
    target_mean: torch.Tensor | None = None
    target_low: torch.Tensor | None = None
    target_high: torch.Tensor | None = None


def lens_modules(lm: LanguageModel) -> tuple[nn.Module, nn.Module]:
    """The model's final norm and unembedding.

    Raises:
        InputError: the model has no final norm (BERT) or no output embeddings.
    """
    if lm.points.table.final_norm is None:
        raise InputError(f"the logit lens needs a final norm; {lm.points.family} models have none")
    norm = lm.module.get_submodule(lm.points.module_name("final_norm"))
    get = getattr(lm.module, "get_output_embeddings", None)
    unembed = get() if callable(get) else None
    if not isinstance(unembed, nn.Module):
        raise InputError("the logit lens needs the unembedding: the model's get_output_embeddings() gave none")
    return norm, unembed


def logit_lens(
    model: LanguageModel | nn.Module,
    texts: Sequence[str],
    position: int = -1,
    top_k: int = 5,
    targets: Answers | None = None,
    batch_size: int = 32,
) -> LogitLensResult:
    """Decode the residual stream at ``position`` after every layer.

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        texts: the prompts (left-padded, so position -1 is every prompt's last token).
        position: the column read (negative from the end).
        top_k: tokens kept per layer and prompt.
        targets: one token per prompt (single-token strings or ids) whose log-prob and rank are tracked.
        batch_size: prompts per forward pass.
    """
    lm = as_lm(model)
    batch = encode_left(lm, texts, "text")
    n, length = batch.input_ids.shape
    if not -length <= position < length:
        raise InputError(f"position {position} is out of range for prompts of {length} padded tokens")
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    target_ids = answer_ids(lm, targets, n, "target") if targets is not None else None
    last = lm.n_layers - 1
    names = [f"blocks.{i}.resid_pre" for i in range(lm.n_layers)] + [f"blocks.{last}.resid_post"]
    norm, unembed = lens_modules(lm)
    with torch.no_grad(), lm.points.cache(names, select=lambda act: act[:, position]) as store:
        for start, stop in chunks(n, batch_size):
            forward_last(lm, batch.input_ids[start:stop], batch.attention_mask[start:stop])
    top_ids, top_lp, target_lp, target_rank = [], [], [], []
    with torch.no_grad(), frozen(lm.module):
        for name in names:
            resid = torch.cat(store[name])  # (N, D)
            logprobs = unembed(norm(resid[:, None]))[:, 0].float().log_softmax(-1)
            vocab = logprobs.shape[-1]
            k = min(top_k, vocab)
            best = logprobs.topk(k, dim=-1)
            top_ids.append(best.indices.cpu())
            top_lp.append(best.values.cpu())
            if target_ids is not None:
                own = logprobs.gather(-1, target_ids.to(logprobs.device)[:, None])
                target_lp.append(own[:, 0].cpu())
                target_rank.append((logprobs > own).sum(-1).cpu())
    ids = torch.stack(top_ids)
    decode = lm.tokenizer.decode
    tokens = [[[str(decode([int(t)])) for t in row] for row in layer] for layer in ids]
    if target_ids is None:
        return LogitLensResult(names, ids, tokens, torch.stack(top_lp))
    lp = torch.stack(target_lp)
    mean, low, high = t_interval(lp.T)
    return LogitLensResult(names, ids, tokens, torch.stack(top_lp), lp, torch.stack(target_rank), mean, low, high)
