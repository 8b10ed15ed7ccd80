"""Attention patterns of chosen layers: the softmax probabilities each head gives from every query to every key.

The probabilities are the model's own: the forward pass runs with ``transformers``' eager attention and
``output_attentions=True`` (the SDPA and flash kernels never form the probability matrix), and the model's
attention implementation is put back afterwards, also when the pass raises. This covers every
``transformers`` architecture with an eager path, Llama-style grouped-query attention included (one pattern
per query head: SmolLM2's 9 query heads share 3 key/value heads). Head ``h`` of a pattern is head ``h`` of the
``blocks.{i}.head_out`` hook point (the input of the output projection is the heads' outputs in that order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mlsafety.core import InputError, LanguageModel, frozen
from mlsafety.monitoring.interp._common import _position_ids, chunks, encode_left


@contextlib.contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """Switch a ``transformers`` model to eager attention for the body; the previous implementation is restored.

    Raises:
        InputError: a module without ``set_attn_implementation`` (not a ``transformers`` model).
    """
    config = getattr(module, "config", None)
    setter = getattr(module, "set_attn_implementation", None)
    if config is None or setter is None:
        raise InputError(
            f"{type(module).__name__} is not a transformers model with set_attn_implementation: attention "
            "patterns need transformers' eager attention (output_attentions)"
        )
    before = getattr(config, "_attn_implementation", None)
    setter("eager")
    try:
        yield
    finally:
        if before is not None and before != "eager":
            setter(before)


def attention_patterns(
    lm: LanguageModel, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16
) -> dict[int, torch.Tensor]:
    """Attention probabilities of ``layers`` on ``texts``, left-padded as the interp methods run prompts.

    Args:
        lm: the language model (a ``transformers`` causal LM inside).
        texts: N prompts.
        layers: block indices.
        batch_size: prompts per forward pass.

    Returns:
        ``{layer: (N, H, L, L)}`` float32 on the CPU, ``L`` the longest prompt's token count; text ``i``'s
        real tokens are the last ``lengths[i]`` columns (row = query, column = key; each real query's row
        sums to 1 over the real keys, padding gets 0).

    Raises:
        InputError: a layer out of range, or a model that returns no attentions.
    """
    n_layers = lm.n_layers
    chosen = sorted({int(i) for i in layers})
    if not chosen or any(not 0 <= i < n_layers for i in chosen):
        raise InputError(f"layers must be block indices in [0, {n_layers}), got {list(layers)!r}")
    batch = encode_left(lm, texts)
    out: dict[int, list[torch.Tensor]] = {i: [] for i in chosen}
    device = lm.device
    with frozen(lm.module), torch.no_grad(), eager_attention(lm.module):
        for start, stop in chunks(len(batch), batch_size):
            mask = batch.attention_mask[start:stop].to(device)
            # keep only the columns this chunk needs, as a padded batch of its own would
            keep = int(mask.sum(1).max())
            ids, mask = batch.input_ids[start:stop, -keep:].to(device), mask[:, -keep:]
            output: Any = lm.module(
                input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), output_attentions=True
            )
            attentions = getattr(output, "attentions", None)
            if not attentions:
                raise InputError(f"{type(lm.module).__name__} returned no attentions with output_attentions=True")
            width = batch.shape[1]
            for i in chosen:
                real = mask[:, None, :, None].float() * mask[:, None, None, :].float()
                probs = attentions[i].float() * real  # padding queries and keys get 0
                if keep < width:  # pad the chunk's key and query columns back to the full width, on the left
                    probs = nn.functional.pad(probs, (width - keep, 0, width - keep, 0))
                out[i].append(probs.cpu())
    return {i: torch.cat(parts) for i, parts in out.items()}
