"""Path patching: the effect of sender heads on the answer only through chosen receivers.

Wang et al. (2022, "Interpretability in the Wild", section 3.1 and appendix B) and Goldowsky-Dill et al.
(2023, "Localizing Model Behavior with Path Patching") isolate a path sender -> receiver in three runs:

1. the source and target runs, caching every head's output (``head_out``);
2. the target run with the sender heads' outputs taken from the source run and **every other attention
   head, the receivers included, frozen** at its target-run output, so the senders' change reaches later
   layers only through the residual stream and the MLPs; what the receivers *would* compute on that
   stream is recorded (for a head receiver: its recomputed output, which is not passed on, so a path
   sender -> receiver 1 -> receiver 2 does not count as direct into receiver 2);
3. the target run with only the receivers patched to their values from run 2; the logit difference of this
   run is the path's effect.

``direction="denoise"`` runs the corrupted prompt as the target and takes the senders from the clean run;
``"noise"`` (Wang et al.'s choice) runs the clean prompt with the senders from the corrupted one. Values are
normalised like activation patching (0 = corrupted run, 1 = clean run).

MLPs and norms are recomputed in run 2, not frozen, as in Wang et al., so "through the receivers" means
through the receivers and any MLPs before them. Simplifications: a receiver head is patched as a whole
output (its query, key and value inputs all see the senders), not per q / k / v input, because the hook
points give head outputs only; patches cover every position. With the final residual stream
(``blocks.{n-1}.resid_post``) as the receiver, the result is the senders' effect not mediated by later
heads, which equals head patching of the senders when no heads come after them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlsafety.core import HookFn, InputError, LanguageModel, Progress, track
from mlsafety.monitoring.interp._common import Answers, answer_ids, as_lm, chunks, encode_pairs, forward_last
from mlsafety.monitoring.interp.metrics import logit_diff
from mlsafety.monitoring.interp.patching import Direction, PatchingResult, _tokens, make_result, run_and_cache

Head = tuple[int, int]
Receiver = str | tuple[int, int] | tuple[int, int, str]


def _heads(lm: LanguageModel, heads: Sequence[Sequence[int]], what: str) -> list[Head]:
    out = []
    for item in heads:
        if len(item) != 2:
            raise InputError(f"{what} must be (layer, head) pairs, got {item!r}")
        layer, head = int(item[0]), int(item[1])
        if not (0 <= layer < lm.n_layers and 0 <= head < lm.points.n_heads):
            raise InputError(
                f"{what} {item!r} is out of range: layers 0..{lm.n_layers - 1}, heads 0..{lm.points.n_heads - 1}"
            )
        out.append((layer, head))
    if not out:
        raise InputError(f"no {what} given; pass at least one (layer, head)")
    return out


def _receivers(lm: LanguageModel, receivers: Sequence[Receiver], first: int) -> tuple[list[str], list[Head]]:
    names: list[str] = []
    heads: list[Sequence[int]] = []
    for item in receivers:
        if isinstance(item, str):
            lm.points.module_name(item)  # unknown names raise, listing the valid ones
            if item == "embed" or item.endswith(".head_out"):
                raise InputError(f"receiver {item!r}: use a later hook point, or (layer, head) for a head's output")
            layer = lm.n_layers if item == "final_norm" else int(item.split(".")[1])
            if layer < first or (item.endswith("resid_pre") and layer <= first):
                raise InputError(f"receiver {item!r} comes before every sender (layer {first}); no path reaches it")
            names.append(item)
        elif len(item) == 3:
            raise InputError(
                f"receiver {item!r}: per q / k / v receivers are not supported; pass (layer, head) to patch the "
                "head's output with all of its inputs seeing the senders"
            )
        else:
            heads.append(item)  # type: ignore[arg-type]
    head_list = _heads(lm, heads, "receiver") if heads else []
    for layer, head in head_list:
        if layer <= first:
            raise InputError(f"receiver head ({layer}, {head}) is not after any sender (first layer {first})")
    if not names and not head_list:
        raise InputError("no receivers given; pass hook names or (layer, head) pairs")
    return names, head_list


def path_patching(
    model: LanguageModel | nn.Module,
    clean: Sequence[str],
    corrupted: Sequence[str],
    correct: Answers,
    wrong: Answers,
    senders: Sequence[Head],
    receivers: Sequence[Receiver],
    direction: Direction = "denoise",
    separately: bool = False,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> PatchingResult:
    """The effect of ``senders`` on the logit difference through ``receivers`` only (see the module docstring).

    Args:
        model, clean, corrupted, correct, wrong, direction, batch_size, progress: as in
            :func:`~mlsafety.monitoring.interp.activation_patching`.
        senders: ``[(layer, head), ...]`` patched together (or one at a time with ``separately``).
        receivers: hook names (``blocks.{j}.resid_pre|resid_post|attn_out|mlp_out``, ``final_norm``) or
            ``(layer, head)`` for a later head's output.
        separately: one path per sender instead of one for the set.

    Returns:
        A :class:`~mlsafety.monitoring.interp.PatchingResult` with axis ``("sender",)``: values ``(P, 1)`` for
        the set, or ``(P, len(senders))`` in the order given.

    Raises:
        InputError: bad senders or receivers (out of range, before every sender, per q/k/v), plus the input
            errors of activation patching.
    """
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    lm = as_lm(model)
    sender_list = _heads(lm, senders, "sender")
    recv_names, recv_heads = _receivers(lm, receivers, min(layer for layer, _ in sender_list))
    clean_b, corrupted_b = encode_pairs(lm, clean, corrupted)
    n = len(clean_b.input_ids)
    correct_ids, wrong_ids = answer_ids(lm, correct, n, "correct"), answer_ids(lm, wrong, n, "wrong")
    source_b, target_b = (clean_b, corrupted_b) if direction == "denoise" else (corrupted_b, clean_b)
    head_names = [f"blocks.{i}.head_out" for i in range(lm.n_layers)]
    source_logits, source = run_and_cache(lm, source_b, head_names, batch_size)
    target_logits, target = run_and_cache(lm, target_b, head_names, batch_size)
    source_ld = logit_diff(source_logits, correct_ids, wrong_ids).cpu()
    target_ld = logit_diff(target_logits, correct_ids, wrong_ids).cpu()

    groups = [[s] for s in sender_list] if separately else [sender_list]
    n_heads, device = lm.points.n_heads, lm.device
    sender_mask = torch.zeros(len(groups), lm.n_layers, n_heads, dtype=torch.bool)
    for g, group in enumerate(groups):
        for layer, head in group:
            sender_mask[g, layer, head] = True
    receiver_mask = torch.zeros(lm.n_layers, n_heads, dtype=torch.bool)
    for layer, head in recv_heads:
        receiver_mask[layer, head] = True
    sender_mask, receiver_mask = sender_mask.to(device), receiver_mask.to(device)

    rows_total = len(groups) * n
    out = torch.empty(rows_total)
    pieces = chunks(rows_total, batch_size)
    with torch.no_grad():
        for start, stop in track(pieces, progress, "path patching", total=len(pieces)):
            rows = torch.arange(start, stop)
            group_of, prompt_of = rows // n, rows % n
            ids, mask = target_b.input_ids[prompt_of], target_b.attention_mask[prompt_of]
            recorded: dict[str, torch.Tensor] = {}
            freeze = _freezer(
                sender_mask[group_of.to(device)], receiver_mask, source, target, prompt_of.to(device), recorded
            )
            record = _recorder(recorded)
            fns2: dict[str, HookFn] = {**dict.fromkeys(head_names, freeze), **dict.fromkeys(recv_names, record)}
            forward_last(lm, ids, mask, fns2)

            fns3: dict[str, HookFn] = {name: _replace_all(recorded[name]) for name in recv_names}
            for layer in sorted({layer for layer, _ in recv_heads}):
                name = f"blocks.{layer}.head_out"
                fns3[name] = _replace_heads(recorded[name], receiver_mask[layer])
            logits = forward_last(lm, ids, mask, fns3)
            out[start:stop] = logit_diff(logits, correct_ids[prompt_of], wrong_ids[prompt_of]).cpu()

    raw = out.reshape(len(groups), n).T
    clean_ld, corrupted_ld = (source_ld, target_ld) if direction == "denoise" else (target_ld, source_ld)
    labels: tuple[list[int | None], ...] = (list(range(len(groups))),)
    return make_result(raw, clean_ld, corrupted_ld, None, ("sender",), labels, "path", direction, _tokens(lm, clean_b))


def _freezer(
    senders: torch.Tensor,
    receivers: torch.Tensor,
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    prompts: torch.Tensor,
    recorded: dict[str, torch.Tensor],
) -> HookFn:
    """Run 2 at one ``head_out``: senders from the source run, every other head (receivers too) frozen.

    The receivers' recomputed outputs are recorded (for run 3) but not passed on. ``senders`` is
    ``(rows, layers, H)``: each batch row's sender heads; ``receivers`` ``(layers, H)``.
    """

    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        layer = int(name.split(".")[1])
        from_source = senders[:, layer][:, None, :, None]
        keep = receivers[layer][None, None, :, None]
        frozen_at = target[name][prompts].to(act.dtype)
        recorded[name] = torch.where(keep, act, frozen_at).detach().clone()
        return torch.where(from_source, source[name][prompts].to(act.dtype), frozen_at)

    return fn


def _recorder(recorded: dict[str, torch.Tensor]) -> HookFn:
    def fn(act: torch.Tensor, name: str) -> None:
        recorded[name] = act.detach().clone()

    return fn


def _replace_all(value: torch.Tensor) -> HookFn:
    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        return value.to(act.dtype)

    return fn


def _replace_heads(value: torch.Tensor, heads: torch.Tensor) -> HookFn:
    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        return torch.where(heads[None, None, :, None], value.to(act.dtype), act)

    return fn
