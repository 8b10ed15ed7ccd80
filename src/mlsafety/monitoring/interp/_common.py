"""Shared machinery of the interpretability methods: the model adapter, prompt pairs, answer tokens, the forward.

Every method here runs prompts **left-padded**, so the last column of a batch is every prompt's final
token (the answer position) and a position index counts from the same end for every prompt. The
attention mask and real-token position ids make padding invisible to the model (see
:class:`~mlsafety.core.LanguageModel`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlsafety.core import HookFn, InputError, LanguageModel, TextBatch, Texts, encode, frozen, unwrap_logits

Answers = Sequence[str] | Sequence[int] | torch.Tensor
"""One answer token per prompt: strings that are single tokens (a leading space counts), or token ids."""


def as_lm(model: LanguageModel | nn.Module, tokenizer: Any = None) -> LanguageModel:
    """``model`` itself when it is a :class:`~mlsafety.core.LanguageModel`, else the module wrapped into one."""
    if isinstance(model, LanguageModel):
        return model
    return LanguageModel(model, tokenizer)


def encode_left(lm: LanguageModel, texts: Sequence[str], what: str = "prompt") -> TextBatch:
    """``texts`` tokenised and left-padded, refusing truncation."""
    items = Texts(texts)
    if len(items) == 0:
        raise InputError(f"no {what}s given; pass at least one string")
    batch = encode(lm.tokenizer, items, lm.max_length, "left")
    if bool(batch.truncated.any()):
        i = int(batch.truncated.nonzero()[0])
        raise InputError(f"{what} {i} is longer than max_length={lm.max_length} tokens; shorten it")
    return batch


def encode_pairs(lm: LanguageModel, clean: Sequence[str], corrupted: Sequence[str]) -> tuple[TextBatch, TextBatch]:
    """Clean and corrupted prompts, left-padded to one common length; each pair must have one token length.

    Raises:
        InputError: different counts, or the first pair whose clean and corrupted token lengths differ.
    """
    clean, corrupted = Texts(clean), Texts(corrupted)
    if len(clean) != len(corrupted):
        raise InputError(
            f"got {len(clean)} clean and {len(corrupted)} corrupted prompts; give one corrupted prompt per clean one"
        )
    both = encode_left(lm, [*clean, *corrupted])
    n = len(clean)
    lengths = both.attention_mask.sum(1)
    differ = (lengths[:n] != lengths[n:]).nonzero()
    if len(differ):
        i = int(differ[0])
        raise InputError(
            f"pair {i}: the clean prompt has {int(lengths[i])} tokens and the corrupted one {int(lengths[n + i])}; "
            "patching needs token-aligned pairs, so make each corrupted prompt the same token length as its clean one"
        )
    keep = int(lengths.max())
    ids, mask = both.input_ids[:, -keep:], both.attention_mask[:, -keep:]
    no = torch.zeros(n, dtype=torch.bool)
    return TextBatch(ids[:n], mask[:n], no), TextBatch(ids[n:], mask[n:], no.clone())


def single_token(tokenizer: Any, text: str) -> int | None:
    """The token id of ``text`` (as given: add any leading space yourself) when it is exactly one token and
    not the tokenizer's unknown token, else None. The one test of "a single-token word" in this package."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if unk is not None and int(ids[0]) == int(unk) else int(ids[0])


def answer_ids(lm: LanguageModel, answers: Answers, n: int, what: str) -> torch.Tensor:
    """One token id per prompt ``(n,)`` from single-token strings (see :func:`single_token`) or ids.

    Raises:
        InputError: a count that is not ``n``, or a string that is not exactly one known token.
    """
    if isinstance(answers, torch.Tensor):
        ids = answers.reshape(-1).long()
    elif len(answers) and all(isinstance(a, str) for a in answers):
        rows: list[int] = []
        for i, text in enumerate(answers):
            token = single_token(lm.tokenizer, str(text))
            if token is None:
                raise InputError(
                    f"{what} answer {i} ({text!r}) is not one known token of this tokenizer (several tokens, or "
                    "the unknown token): choose single-token answers (mind the leading space) or pass token ids"
                )
            rows.append(token)
        ids = torch.tensor(rows, dtype=torch.long)
    else:
        ids = torch.as_tensor(list(answers), dtype=torch.long)
    if ids.shape != (n,):
        raise InputError(f"got {ids.numel()} {what} answers for {n} prompts; give one per prompt")
    return ids


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_last(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    fns: Mapping[str, HookFn] | None = None,
) -> torch.Tensor:
    """Logits at the last column ``(n, V)`` (float32) of one left-padded batch, with ``fns`` attached.

    Gradients follow the caller's grad mode; the model's parameters are frozen and its mode restored.
    When the model's forward takes ``logits_to_keep`` (``transformers`` causal LMs), only the last
    position is unembedded, so a large vocabulary costs one row per prompt.
    """
    params = _forward_params(lm.module)
    kwargs: dict[str, Any] = {}
    device = lm.device
    mask = attention_mask.to(device)
    if "attention_mask" in params:
        kwargs["attention_mask"] = mask
    elif not bool(mask.all()):
        raise InputError(
            "this model's forward takes no attention_mask, so left-padded prompts of different token lengths "
            "would change its output: give prompts of one token length"
        )
    if "position_ids" in params:
        kwargs["position_ids"] = _position_ids(mask)
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    ids = input_ids.to(device)
    with frozen(lm.module), lm.points.hooks(dict(fns or {})):
        output = lm.module(input_ids=ids, **kwargs) if "input_ids" in params else lm.module(ids, **kwargs)
    logits = unwrap_logits(output)
    if logits.ndim != 3:
        raise InputError(f"a language model must return logits (N, L, V), got {tuple(logits.shape)}")
    return logits[:, -1].float()


def _forward_params(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of ``size``."""
    if not isinstance(size, int) or size < 1:
        raise InputError(f"batch_size must be a positive integer, got {size!r}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]
