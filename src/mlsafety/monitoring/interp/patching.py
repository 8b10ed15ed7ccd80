"""Activation patching over layers x positions and over attention heads, batched over prompts and sites.

Activation patching (Meng et al., 2022, "Locating and Editing Factual Associations in GPT"; Wang et al.,
2022, "Interpretability in the Wild"; terminology of Heimersheim and Nanda, 2024, "How to use and interpret
activation patching") runs the model on one prompt while one activation ("site") is taken from a run on
another, and measures how much the answer's logit difference moves.

* ``direction="denoise"``: run the **corrupted** prompt and patch in the **clean** activation at the site;
  a site whose patch restores the clean answer (normalised value near 1) is *sufficient* to carry it.
* ``direction="noise"``: run the **clean** prompt and patch in the **corrupted** activation; a site whose
  patch destroys the answer (normalised value near 0) is *necessary*.

Values are normalised so that 0 is the corrupted run's logit difference and 1 the clean run's, in both
directions: per prompt in ``values``, and as a ratio of means over prompts in ``mean``. Cost: the clean
and corrupted runs once (caching the patched activations), then ``prompts x sites`` patched forward
passes, stacked ``batch_size`` rows at a time: row ``r`` of a batch is a copy of one prompt with one site
patched, so the sweep costs the forward passes it needs and never one call per site per prompt. Prompts
are left-padded, so position ``-1`` is every prompt's last token (the answer position); a site at a
position a shorter prompt does not have gives NaN for that prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mlsafety.core import HookFn, InputError, LanguageModel, Progress, TextBatch, track
from mlsafety.monitoring.interp._common import Answers, answer_ids, as_lm, chunks, encode_pairs, forward_last
from mlsafety.monitoring.interp.metrics import PromptMetric, logit_diff, normalised, ratio_of_means

Direction = Literal["denoise", "noise"]
PATCH_POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Site:
    """One patch site: a hook point and the positions (and heads) replaced there.

    Attributes:
        name: the hook point (``blocks.{i}.<point>``).
        positions: ``(L,)`` bool over the padded columns.
        heads: ``(H,)`` bool for ``head_out`` points, None otherwise.
    """

    name: str
    positions: torch.Tensor
    heads: torch.Tensor | None = None

    def mask(self) -> torch.Tensor:
        """``(L,)`` or ``(L, H)`` bool: where the activation is replaced."""
        if self.heads is None:
            return self.positions
        return self.positions[:, None] & self.heads[None, :]


@dataclass(frozen=True)
class PatchingResult:
    """The effect of patching each site, per prompt, with means and 95% intervals over prompts.

    Attributes:
        values: ``(P, *sites)`` normalised effects (0 = corrupted run, 1 = clean run); NaN where a prompt
            has no token at the site's position.
        raw: ``(P, *sites)`` the patched runs' logit differences.
        clean, corrupted: the logit differences of the unpatched clean and corrupted runs.
        mean, ci_low, ci_high: ``sites`` shape: the normalised effect over prompts as a ratio of means,
            ``(mean raw - mean corrupted) / (mean clean - mean corrupted)`` (not the mean of ``values``, which
            near-tied prompts dominate), with its paired-bootstrap 95% interval
            (:func:`~mlsafety.monitoring.interp.metrics.ratio_of_means`).
        axes: the names of the site axes, e.g. ``("layer", "position")`` or ``("layer", "head")``.
        labels: the coordinates along each axis (layer numbers; position columns, negative from the end,
            or None for "all positions together"; head numbers).
        point: the hook point patched (``resid_pre``, ``head_out``, ...).
        direction: ``"denoise"`` or ``"noise"``.
        tokens: the first clean prompt's tokens at the padded columns (``""`` on padding), for axis labels.
    """

    values: torch.Tensor
    raw: torch.Tensor
    clean: PromptMetric
    corrupted: PromptMetric
    mean: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    axes: tuple[str, ...]
    labels: tuple[list[int | None], ...]
    point: str
    direction: Direction
    tokens: list[str]


def _check_direction(direction: str) -> None:
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def _layers(lm: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    n = lm.n_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if not -n <= int(layer) < n:
            raise InputError(f"layer {layer} is out of range for a model with {n} layers")
        out.append(int(layer) % n)
    return out


def _columns(positions: Sequence[int], length: int) -> list[int]:
    out = []
    for p in positions:
        if not -length <= int(p) < length:
            raise InputError(f"position {p} is out of range for prompts of {length} padded tokens")
        out.append(int(p) % length)
    return out


def run_and_cache(
    lm: LanguageModel, batch: TextBatch, names: Sequence[str], batch_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits at the last column ``(P, V)`` and the activations at ``names`` (on the model's device)."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def record(act: torch.Tensor, name: str) -> None:
        store[name].append(act.detach().clone())

    last = []
    with torch.no_grad():
        for start, stop in chunks(len(batch.input_ids), batch_size):
            last.append(
                forward_last(
                    lm,
                    batch.input_ids[start:stop],
                    batch.attention_mask[start:stop],
                    dict.fromkeys(names, record),
                )
            )
    return torch.cat(last), {name: torch.cat(parts) for name, parts in store.items()}


def _patch_hook(rows: torch.Tensor, prompts: torch.Tensor, masks: torch.Tensor, source: torch.Tensor) -> HookFn:
    """Replace, in batch rows ``rows``, the masked entries by the source activation of prompt ``prompts``."""

    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        new = act.clone()
        m = masks.reshape(*masks.shape, *([1] * (act.ndim - masks.ndim)))
        new[rows] = torch.where(m, source[prompts].to(act.dtype), act[rows])
        return new

    return fn


def patch_sweep(
    lm: LanguageModel,
    target: TextBatch,
    sources: dict[str, torch.Tensor],
    sites: Sequence[Site],
    correct: torch.Tensor,
    wrong: torch.Tensor,
    batch_size: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The logit difference of ``target`` with each site patched from ``sources``: ``(P, S)``.

    Rows ``(site s, prompt i)`` are stacked ``batch_size`` at a time; each hook point gets one hook that
    patches the rows whose site lies there.
    """
    n_prompts, n_sites = len(target.input_ids), len(sites)
    device = lm.device
    masks = torch.stack([site.mask() for site in sites]) if sites else torch.zeros(0)
    names = [site.name for site in sites]
    out = torch.empty(n_sites * n_prompts)
    pieces = chunks(n_sites * n_prompts, batch_size)
    with torch.no_grad():
        for start, stop in track(pieces, progress, "patching", total=len(pieces)):
            rows = torch.arange(start, stop)
            site_of, prompt_of = rows // n_prompts, rows % n_prompts
            fns: dict[str, HookFn] = {}
            for name in dict.fromkeys(names[int(s)] for s in site_of.unique()):
                here = torch.tensor([names[int(s)] == name for s in site_of])
                local = here.nonzero()[:, 0]
                fns[name] = _patch_hook(
                    local.to(device),
                    prompt_of[local].to(device),
                    masks[site_of[local]].to(device),
                    sources[name],
                )
            logits = forward_last(lm, target.input_ids[prompt_of], target.attention_mask[prompt_of], fns)
            out[start:stop] = logit_diff(logits, correct[prompt_of], wrong[prompt_of]).cpu()
    return out.reshape(n_sites, n_prompts).T


def _setup(
    model: LanguageModel | nn.Module,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Answers,
    wrong: Answers,
    direction: str,
) -> tuple[LanguageModel, TextBatch, TextBatch, torch.Tensor, torch.Tensor]:
    _check_direction(direction)
    lm = as_lm(model)
    clean_b, corrupted_b = encode_pairs(lm, clean, corrupted)
    n = len(clean_b.input_ids)
    return lm, clean_b, corrupted_b, answer_ids(lm, correct, n, "correct"), answer_ids(lm, wrong, n, "wrong")


def run_sites(
    lm: LanguageModel,
    clean_b: TextBatch,
    corrupted_b: TextBatch,
    correct: torch.Tensor,
    wrong: torch.Tensor,
    sites: Sequence[Site],
    direction: Direction,
    batch_size: int,
    progress: Progress | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(raw (P, S), clean logit diff (P,), corrupted logit diff (P,))`` of patching each site."""
    names = list(dict.fromkeys(site.name for site in sites))
    source_b, target_b = (clean_b, corrupted_b) if direction == "denoise" else (corrupted_b, clean_b)
    source_logits, sources = run_and_cache(lm, source_b, names, batch_size)
    target_logits, _ = run_and_cache(lm, target_b, [], batch_size)
    source_ld = logit_diff(source_logits, correct, wrong).cpu()
    target_ld = logit_diff(target_logits, correct, wrong).cpu()
    clean_ld, corrupted_ld = (source_ld, target_ld) if direction == "denoise" else (target_ld, source_ld)
    raw = patch_sweep(lm, target_b, sources, sites, correct, wrong, batch_size, progress)
    return raw, clean_ld, corrupted_ld


def make_result(
    raw: torch.Tensor,
    clean_ld: torch.Tensor,
    corrupted_ld: torch.Tensor,
    missing: torch.Tensor | None,
    axes: tuple[str, ...],
    labels: tuple[list[int | None], ...],
    point: str,
    direction: Direction,
    tokens: list[str],
) -> PatchingResult:
    """Normalise ``raw`` ``(P, *sites)``, blank ``missing`` entries, and summarise over prompts."""
    values = normalised(raw, clean_ld, corrupted_ld)
    if missing is not None:
        values = values.masked_fill(missing, float("nan"))
        raw = raw.masked_fill(missing, float("nan"))
    mean, low, high = ratio_of_means(raw, clean_ld, corrupted_ld)
    return PatchingResult(
        values=values,
        raw=raw,
        clean=PromptMetric.of(clean_ld),
        corrupted=PromptMetric.of(corrupted_ld),
        mean=mean,
        ci_low=low,
        ci_high=high,
        axes=axes,
        labels=labels,
        point=point,
        direction=direction,
        tokens=tokens,
    )


def _tokens(lm: LanguageModel, batch: TextBatch) -> list[str]:
    ids, mask = batch.input_ids[0], batch.attention_mask[0]
    return [str(lm.tokenizer.decode([int(t)])) if int(m) else "" for t, m in zip(ids, mask, strict=True)]


def activation_patching(
    model: LanguageModel | nn.Module,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Answers,
    wrong: Answers,
    point: str = "resid_pre",
    positions: Sequence[int] | Literal["all"] | None = "all",
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> PatchingResult:
    """Patch ``point`` at every layer and position, one site at a time (see the module docstring).

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` or a causal LM module with ``.tokenizer``.
        clean, corrupted: prompt pairs of equal token length per pair.
        correct, wrong: the answer tokens whose logit difference is measured (single-token strings or ids),
            one per prompt: the clean answer and the corrupted one.
        point: ``resid_pre``, ``resid_post``, ``attn_out`` or ``mlp_out``.
        positions: ``"all"`` patches each padded column separately; a list of columns (negative from the
            end) patches each of them separately; None patches all positions together (one site per layer).
        direction: ``"denoise"`` (run corrupted, patch clean in) or ``"noise"`` (the reverse).
        layers: the layers to sweep; None: all.
        batch_size: patched rows (prompt copies) per forward pass.
        progress: shows progress over the batches.

    Returns:
        A :class:`PatchingResult` with site axes ``("layer", "position")``: values ``(P, layers, positions)``.

    Raises:
        InputError: an unknown point or direction, pairs of different token lengths, answers that are not
            single tokens, a prompt whose clean and corrupted logit differences are equal.
    """
    if point not in PATCH_POINTS:
        raise InputError(f"point must be one of {', '.join(PATCH_POINTS)} (heads: use head_patching), got {point!r}")
    lm, clean_b, corrupted_b, correct_ids, wrong_ids = _setup(model, clean, corrupted, correct, wrong, direction)
    length = clean_b.input_ids.shape[1]
    chosen = _layers(lm, layers)
    cols: list[int | None]
    if positions is None:
        cols = [None]
    elif isinstance(positions, str):
        if positions != "all":
            raise InputError(f"positions must be 'all', a list of positions or None, got {positions!r}")
        cols = list(range(length))
    else:
        cols = list(_columns(positions, length))
    sites = []
    for layer in chosen:
        for col in cols:
            mask = torch.ones(length, dtype=torch.bool) if col is None else torch.arange(length) == col
            sites.append(Site(f"blocks.{layer}.{point}", mask))
    raw, clean_ld, corrupted_ld = run_sites(
        lm, clean_b, corrupted_b, correct_ids, wrong_ids, sites, direction, batch_size, progress
    )
    shape = (len(clean_b.input_ids), len(chosen), len(cols))
    raw = raw.reshape(shape)
    real = clean_b.attention_mask.bool()
    missing = None
    if positions is not None:
        missing = ~real[:, torch.tensor([c for c in cols if c is not None], dtype=torch.long)]
        missing = missing[:, None, :].expand(shape)
    labels: tuple[list[int | None], ...] = (
        list(chosen),
        [None] if positions is None else [c - length for c in cols if c is not None],
    )
    return make_result(
        raw, clean_ld, corrupted_ld, missing, ("layer", "position"), labels, point, direction, _tokens(lm, clean_b)
    )


def head_patching(
    model: LanguageModel | nn.Module,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Answers,
    wrong: Answers,
    point: str = "head_out",
    positions: Sequence[int] | None = None,
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> PatchingResult:
    """Patch each attention head's output (``head_out``) separately, over layers x heads.

    Args:
        model, clean, corrupted, correct, wrong, direction, layers, batch_size, progress: as in
            :func:`activation_patching`.
        point: ``head_out`` (the per-head input of the attention output projection).
        positions: the columns patched together for each head (negative from the end); None: all.

    Returns:
        A :class:`PatchingResult` with site axes ``("layer", "head")``: values ``(P, layers, heads)``.
    """
    if point != "head_out":
        raise InputError(f"head_patching patches point 'head_out', got {point!r}")
    lm, clean_b, corrupted_b, correct_ids, wrong_ids = _setup(model, clean, corrupted, correct, wrong, direction)
    length = clean_b.input_ids.shape[1]
    chosen = _layers(lm, layers)
    pos_mask = torch.ones(length, dtype=torch.bool)
    if positions is not None:
        pos_mask = torch.zeros(length, dtype=torch.bool)
        pos_mask[_columns(positions, length)] = True
    n_heads = lm.points.n_heads
    sites = [
        Site(f"blocks.{layer}.head_out", pos_mask, torch.arange(n_heads) == head)
        for layer in chosen
        for head in range(n_heads)
    ]
    raw, clean_ld, corrupted_ld = run_sites(
        lm, clean_b, corrupted_b, correct_ids, wrong_ids, sites, direction, batch_size, progress
    )
    raw = raw.reshape(len(clean_b.input_ids), len(chosen), n_heads)
    labels: tuple[list[int | None], ...] = (list(chosen), list(range(n_heads)))
    return make_result(
        raw, clean_ld, corrupted_ld, None, ("layer", "head"), labels, point, direction, _tokens(lm, clean_b)
    )
