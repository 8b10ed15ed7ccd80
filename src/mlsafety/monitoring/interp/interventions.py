"""Interventions on named hook points: replace (patch), ablate and cache activations.

The context managers attach their hooks through :meth:`mlsafety.core.HookPoints.hooks`, which looks up the
modules behind the names (``embed``, ``blocks.{i}.resid_pre|head_out|attn_out|mlp_out|resid_post``,
``final_norm``; ``head_out`` is ``(N, L, H, d_head)``) and always removes the hooks on exit, also when the
body raises. These are the primitives of activation patching (Meng et al., 2022, "Locating and Editing
Factual Associations in GPT"; Wang et al., 2022, "Interpretability in the Wild") and of mean ablation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mlsafety.core import HookFn, InputError, LanguageModel, TextBatch
from mlsafety.monitoring.interp._common import as_lm, chunks, encode_left

Replacement = torch.Tensor | Callable[[torch.Tensor, str], torch.Tensor]
"""A tensor broadcastable to the activation, or ``fn(activation, name) -> tensor`` of the activation's shape."""

Heads = Sequence[int] | Mapping[str, Sequence[int]] | None
"""Heads to touch at ``head_out`` points: one list for every such point, or a list per point name."""


def _heads_for(heads: Heads, name: str) -> list[int] | None:
    if heads is None:
        return None
    if isinstance(heads, Mapping):
        chosen = heads.get(name)
        return None if chosen is None else [int(h) for h in chosen]
    return [int(h) for h in heads]


def _mask(
    act: torch.Tensor, name: str, positions: Sequence[int] | None, heads: list[int] | None
) -> torch.Tensor | None:
    """A boolean mask broadcastable to ``act`` selecting the positions and heads; None: everything."""
    if positions is None and heads is None:
        return None
    shape = [1] * act.ndim
    mask = torch.ones(act.shape[1:3] if act.ndim == 4 else act.shape[1:2], dtype=torch.bool, device=act.device)
    if positions is not None:
        keep = torch.zeros(act.shape[1], dtype=torch.bool, device=act.device)
        keep[list(positions)] = True
        mask = mask & (keep[:, None] if mask.ndim == 2 else keep)
    if heads is not None:
        if act.ndim != 4:
            raise InputError(f"heads= applies to head_out points only, not to {name!r}")
        keep_h = torch.zeros(act.shape[2], dtype=torch.bool, device=act.device)
        keep_h[heads] = True
        mask = mask & keep_h[None, :]
    shape[1 : 1 + mask.ndim] = mask.shape
    return mask.reshape(shape)


def _replacer(
    value: Replacement, positions: Sequence[int] | None, heads: Heads
) -> Callable[[torch.Tensor, str], torch.Tensor]:
    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        new = value(act, name) if callable(value) else value
        if not isinstance(new, torch.Tensor):
            raise InputError(f"the patch for {name!r} gave {type(new).__name__}, not a tensor")
        try:
            new = new.to(act.device, act.dtype).expand_as(act)
        except RuntimeError:
            raise InputError(
                f"the patch for {name!r} has shape {tuple(new.shape)}, which does not broadcast to the "
                f"activation's {tuple(act.shape)}"
            ) from None
        mask = _mask(act, name, positions, _heads_for(heads, name))
        return new.clone() if mask is None else torch.where(mask, new, act)

    return fn


@contextlib.contextmanager
def patched(
    model: LanguageModel | nn.Module,
    patches: Mapping[str, Replacement],
    positions: Sequence[int] | None = None,
    heads: Heads = None,
) -> Iterator[LanguageModel]:
    """Replace the activations at named hook points for the body.

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        patches: ``{hook name: tensor or fn}``; a tensor must broadcast to the activation (e.g. a cached
            activation of the same batch, or a ``(D,)`` mean); ``fn(activation, name)`` returns the new one.
        positions: token positions (columns of the padded batch, negative from the end) to replace;
            None: every position.
        heads: for ``head_out`` points, the heads to replace (a list, or ``{name: list}``); None: all.

    Yields:
        The language model, with the patches attached.

    Raises:
        UnknownNameError: a name that is not a hook point (the message lists the valid ones).

    Example:
        Positions are columns of the batch, so run it **left-padded** (column -1 is then every prompt's
        last token; with right padding it is padding for the shorter prompts). ``clean`` and
        ``corrupted`` pair up with equal token lengths, so their left-padded columns line up:

        >>> clean_heads = cache(lm, clean, ["blocks.3.head_out"])["blocks.3.head_out"]  # left-padded
        >>> batch = mlsafety.core.encode(lm.tokenizer, corrupted, lm.max_length, "left")
        >>> with patched(lm, {"blocks.3.head_out": clean_heads}, positions=[-1], heads=[5]):
        ...     logits = lm.run_with_cache(batch, [])[0]
    """
    lm = as_lm(model)
    fns: dict[str, HookFn] = {name: _replacer(value, positions, heads) for name, value in patches.items()}
    with lm.points.hooks(fns):
        yield lm


@contextlib.contextmanager
def ablated(
    model: LanguageModel | nn.Module,
    names: Sequence[str],
    how: Literal["mean", "zero"] = "mean",
    means: Mapping[str, torch.Tensor] | None = None,
    positions: Sequence[int] | None = None,
    heads: Heads = None,
) -> Iterator[LanguageModel]:
    """Ablate the activations at ``names`` for the body: set them to zero or to a reference mean.

    Mean ablation (Wang et al., 2022, "Interpretability in the Wild", section 2) replaces an activation by
    its mean over a reference distribution; zero ablation sets it to 0. Wang et al. average each position
    of a template separately (over the ABC distribution): pass ``means=mean_activations(...,
    per_position=True)`` from reference prompts of the ablated prompts' token layout to do the same. The
    pooled default averages over every real token, the first (BOS) token included, whose activations in
    Llama-type models are far larger than the rest: it is one vector for all positions and is not
    on-distribution at any one of them.

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        names: hook point names.
        how: ``"mean"`` or ``"zero"``.
        means: for ``"mean"``, ``{name: mean}`` from :func:`mean_activations`, one per name: pooled
            ``(D,)`` / ``(H, d_head)``, or per position ``(L, ...)`` for batches of ``L`` left-padded columns.
        positions: token positions to ablate (None: all).
        heads: for ``head_out`` points, the heads to ablate (a list, or ``{name: list}``); None: all.

    Raises:
        InputError: an unknown ``how``, or ``"mean"`` without a mean for every name.
    """
    if how not in ("mean", "zero"):
        raise InputError(f"how must be 'mean' or 'zero', got {how!r}")
    patches: dict[str, Replacement] = {}
    for name in names:
        if how == "zero":
            patches[name] = _zeros
        else:
            if means is None or name not in means:
                raise InputError(
                    f"mean ablation of {name!r} needs its mean: pass means=mean_activations(lm, texts, names)"
                )
            patches[name] = means[name]
    with patched(model, patches, positions=positions, heads=heads) as lm:
        yield lm


def _zeros(act: torch.Tensor, name: str) -> torch.Tensor:
    return torch.zeros_like(act)


@dataclass(frozen=True)
class ActivationCache:
    """Activations recorded over a batch of texts.

    Attributes:
        activations: ``{name: tensor (N, L, ...)}`` on the CPU, lined up with ``batch`` (left padding).
        batch: the token ids the model saw.
    """

    activations: dict[str, torch.Tensor]
    batch: TextBatch

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.activations[name]


def cache(
    model: LanguageModel | nn.Module, texts: Sequence[str], names: Sequence[str], batch_size: int = 32
) -> ActivationCache:
    """Run ``texts`` (left-padded) and record the activations at ``names``.

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        texts: the prompts.
        names: hook point names.
        batch_size: texts per forward pass.
    """
    lm = as_lm(model)
    batch = encode_left(lm, texts, "text")
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start, stop in chunks(len(batch.input_ids), batch_size):
        sub = TextBatch(batch.input_ids[start:stop], batch.attention_mask[start:stop], batch.truncated[start:stop])
        _, acts = lm.run_with_cache(sub, names)
        for name in names:
            store[name].append(acts[name].cpu())
    return ActivationCache({name: torch.cat(parts) for name, parts in store.items()}, batch)


def mean_activations(
    model: LanguageModel | nn.Module,
    texts: Sequence[str],
    names: Sequence[str],
    batch_size: int = 32,
    per_position: bool = False,
) -> dict[str, torch.Tensor]:
    """The mean activation at each of ``names`` over the real tokens of ``texts`` (padding excluded).

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        texts: the reference prompts.
        names: hook point names.
        batch_size: texts per forward pass.
        per_position: average each column of the left-padded batch separately (over the prompts that
            have a real token there), as Wang et al. (2022) average each template position; the means
            line up with a left-padded batch of the same width (prompts of the reference's token
            layout). Columns where no prompt has a real token get 0. False: one mean pooled over every
            real token, the first (BOS) token included.

    Returns:
        ``{name: (D,)}``, or ``(H, d_head)`` for ``head_out`` points; with ``per_position`` a leading
        ``L`` (the padded width): what :func:`ablated` takes.
    """
    recorded = cache(model, texts, names, batch_size)
    mask = recorded.batch.attention_mask.bool()
    if not per_position:
        return {name: act[mask].float().mean(0).to(act.dtype) for name, act in recorded.activations.items()}
    out = {}
    count = mask.sum(0).clamp(min=1).float()
    for name, act in recorded.activations.items():
        real = mask.reshape(*mask.shape, *([1] * (act.ndim - 2)))
        total = torch.where(real, act.float(), 0.0).sum(0)
        out[name] = (total / count.reshape(-1, *([1] * (act.ndim - 2)))).to(act.dtype)
    return out
