"""Attribution patching: the first-order (gradient) approximation of activation patching.

Nanda (2023, "Attribution Patching: Activation Patching At Industrial Scale") and Syed, Rager and Conmy
(2023, "Attribution Patching Outperforms Automated Circuit Discovery") estimate the effect of patching an
activation ``a`` from the source run into the target run by a Taylor expansion of the metric at the target
run: ``m(patched) - m(target) ~ (a_source - a_target) . dm/da (target)``. One forward and one backward pass
per batch of prompts give every site at once. The estimate is exact when the metric is linear in the
activation (e.g. the last MLP output of a model whose final norm is the identity) and degrades where
attention patterns or norms bend the path.

Sites and shapes are those of :func:`~mlsafety.monitoring.interp.activation_patching` (``head_out``: those of
:func:`~mlsafety.monitoring.interp.head_patching`); the estimate is added to the target run's logit
difference and normalised the same way, so the two results compare directly (:func:`agreement`).
Departure: the gradient is taken of the summed logit difference over a batch; prompts do not interact,
so each prompt's gradient is its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from scipy import stats
from torch import nn

from mlsafety.core import HookFn, InputError, LanguageModel, Progress, TextBatch, track
from mlsafety.monitoring.interp._common import Answers, answer_ids, as_lm, chunks, encode_pairs, forward_last
from mlsafety.monitoring.interp.metrics import logit_diff
from mlsafety.monitoring.interp.patching import (
    PATCH_POINTS,
    Direction,
    PatchingResult,
    _columns,
    _layers,
    _tokens,
    make_result,
    run_and_cache,
)


def _gradients(
    lm: LanguageModel,
    target: TextBatch,
    names: Sequence[str],
    correct: torch.Tensor,
    wrong: torch.Tensor,
    batch_size: int,
    progress: Progress | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The target run's logit difference ``(P,)``, its activations and their gradients at ``names``."""
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    diffs = []
    pieces = chunks(len(target.input_ids), batch_size)
    for start, stop in track(pieces, progress, "attribution patching", total=len(pieces)):
        seen: dict[str, torch.Tensor] = {}

        def leaf(act: torch.Tensor, name: str) -> torch.Tensor:
            # parameters are frozen, so the graph starts at a leaf copy of the embeddings
            return act.detach().requires_grad_(True)

        fns: dict[str, HookFn] = {"embed": leaf, **dict.fromkeys(names, _keeper(seen))}
        with torch.enable_grad():
            logits = forward_last(lm, target.input_ids[start:stop], target.attention_mask[start:stop], fns)
            diff = logit_diff(logits, correct[start:stop], wrong[start:stop])
            got = torch.autograd.grad(diff.sum(), [seen[name] for name in names], allow_unused=True)
        diffs.append(diff.detach().cpu())
        for name, g in zip(names, got, strict=True):
            acts[name].append(seen[name].detach())
            grads[name].append(torch.zeros_like(seen[name]) if g is None else g.detach())
    return (
        torch.cat(diffs),
        {n: torch.cat(v) for n, v in acts.items()},
        {n: torch.cat(v) for n, v in grads.items()},
    )


def _keeper(seen: dict[str, torch.Tensor]) -> HookFn:
    def keep(act: torch.Tensor, name: str) -> torch.Tensor:
        seen[name] = act
        return act  # returned so that head_out's per-head view is the tensor the graph uses

    return keep


def attribution_patching(
    model: LanguageModel | nn.Module,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Answers,
    wrong: Answers,
    point: str = "resid_pre",
    positions: Sequence[int] | Literal["all"] | None = "all",
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> PatchingResult:
    """Estimate activation (or head) patching of every site from one forward and backward pass per batch.

    Args:
        model, clean, corrupted, correct, wrong, direction, layers, progress: as in
            :func:`~mlsafety.monitoring.interp.activation_patching`.
        point: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` (sites layers x positions) or
            ``head_out`` (sites layers x heads).
        positions: for block points, ``"all"`` (each column), a list of columns, or None (all columns as
            one site); for ``head_out``, the columns summed per head (``"all"`` or None: every column).
        batch_size: prompts per forward and backward pass.

    Returns:
        A :class:`~mlsafety.monitoring.interp.PatchingResult` whose ``raw`` holds the estimated patched logit
        differences.
    """
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if point not in (*PATCH_POINTS, "head_out"):
        raise InputError(f"point must be one of {', '.join((*PATCH_POINTS, 'head_out'))}, got {point!r}")
    if isinstance(positions, str) and positions != "all":
        raise InputError(f"positions must be 'all', a list of positions or None, got {positions!r}")
    lm = as_lm(model)
    clean_b, corrupted_b = encode_pairs(lm, clean, corrupted)
    n, length = clean_b.input_ids.shape
    correct_ids, wrong_ids = answer_ids(lm, correct, n, "correct"), answer_ids(lm, wrong, n, "wrong")
    chosen = _layers(lm, layers)
    names = [f"blocks.{layer}.{point}" for layer in chosen]
    source_b, target_b = (clean_b, corrupted_b) if direction == "denoise" else (corrupted_b, clean_b)
    source_logits, sources = run_and_cache(lm, source_b, names, batch_size)
    source_ld = logit_diff(source_logits, correct_ids, wrong_ids).cpu()
    target_ld, targets, grads = _gradients(lm, target_b, names, correct_ids, wrong_ids, batch_size, progress)
    # (P, layers, L[, H], width) -> per-entry first-order effect
    effect = torch.stack(
        [((sources[name] - targets[name]) * grads[name]).sum(-1).float().cpu() for name in names], dim=1
    )
    clean_ld, corrupted_ld = (source_ld, target_ld) if direction == "denoise" else (target_ld, source_ld)
    real = clean_b.attention_mask.bool()
    tokens = _tokens(lm, clean_b)
    if point == "head_out":
        cols = list(range(length)) if positions is None or isinstance(positions, str) else _columns(positions, length)
        raw = target_ld[:, None, None] + effect[:, :, cols].sum(2)
        labels: tuple[list[int | None], ...] = (list(chosen), list(range(lm.points.n_heads)))
        return make_result(raw, clean_ld, corrupted_ld, None, ("layer", "head"), labels, point, direction, tokens)
    if positions is None:
        raw = target_ld[:, None, None] + effect.sum(2, keepdim=True)
        labels = (list(chosen), [None])
        return make_result(raw, clean_ld, corrupted_ld, None, ("layer", "position"), labels, point, direction, tokens)
    cols = list(range(length)) if isinstance(positions, str) else _columns(positions, length)
    raw = target_ld[:, None, None] + effect[:, :, cols]
    missing = (~real[:, cols])[:, None, :].expand(raw.shape)
    labels = (list(chosen), [c - length for c in cols])
    return make_result(raw, clean_ld, corrupted_ld, missing, ("layer", "position"), labels, point, direction, tokens)


@dataclass(frozen=True)
class Agreement:
    """How well an approximate patching result ranks and scales like the exact one, over sites.

    Attributes:
        pearson, spearman: correlations of the per-site effects.
        pearson_ci, spearman_ci: 95% intervals (Fisher z; Spearman with the Fieller et al., 1957, variance).
        n_sites: the number of sites compared.
    """

    pearson: float
    pearson_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    n_sites: int


def _fisher(r: float, n: int, variance: float) -> tuple[float, float]:
    if n <= 3 or not math.isfinite(r) or abs(r) >= 1:
        return (r, r)
    z, half = math.atanh(r), 1.959963984540054 * math.sqrt(variance / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def _site_effect(result: PatchingResult | torch.Tensor) -> torch.Tensor:
    if not isinstance(result, PatchingResult):
        return result
    return result.raw.nanmean(0) - result.corrupted.mean


def agreement(exact: PatchingResult | torch.Tensor, approx: PatchingResult | torch.Tensor) -> Agreement:
    """Pearson and Spearman correlation between exact and approximate effects over sites.

    Args:
        exact, approx: patching results, whose per-site mean effects ``mean(raw) - mean(corrupted)`` over
            prompts are compared (the mean of per-prompt normalised values is avoided because a prompt whose
            clean and corrupted runs nearly agree dominates it), or tensors of per-site values of one shape;
            sites that are NaN in either are skipped.

    Raises:
        InputError: different shapes, or fewer than three sites to compare.
    """
    a, b = _site_effect(exact), _site_effect(approx)
    if a.shape != b.shape:
        raise InputError(f"exact and approximate results have shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    ok = ~(torch.isnan(a) | torch.isnan(b))
    x, y = a[ok].cpu().numpy(), b[ok].cpu().numpy()  # results of a model on a GPU stay there
    n = len(x)
    if n < 3:
        raise InputError(f"agreement needs at least three sites, got {n}")
    pearson = float(stats.pearsonr(x, y).statistic)
    spearman = float(stats.spearmanr(x, y).statistic)
    return Agreement(pearson, _fisher(pearson, n, 1.0), spearman, _fisher(spearman, n, 1.06), n)
