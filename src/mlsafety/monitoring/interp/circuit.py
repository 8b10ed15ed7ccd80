"""Circuit discovery on the IOI task: the logit difference, the heads that carry it, where they look, faithfulness.

Wang, Variengien, Conmy, Shlegeris and Steinhardt, "Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small", 2022. :func:`ioi_circuit_report` measures, on an
:class:`~mlsafety.monitoring.interp.ioi.IOIDataset`:

1. the model's IOI logit difference ``logit(IO) - logit(S)`` at END on the clean and on the ABC prompts,
   and the share of clean prompts where IO beats S;
2. the effect of patching each head's output (:func:`~mlsafety.monitoring.interp.head_patching`, at every
   position by default) between clean and ABC runs, ranked by size;
3. for the top heads, the attention probability from END to the IO, S1 and S2 tokens
   (:func:`~mlsafety.monitoring.interp.attention.attention_patterns`: the model's own eager-attention
   probabilities, one pattern per query head, so it holds for grouped-query attention too);
4. the faithfulness ``F(C) / F(M)`` of the circuit made of the top ``k`` heads: ``F`` is the mean logit
   difference, ``F(C)`` measured with every head outside ``C`` mean-ablated over the ABC distribution.

Departures from the paper: heads are ranked by activation patching of each head, not by Wang et al.'s path
patching from the logits backwards, so the circuit is the set of heads whose own output matters most, not
a graph of head classes; the patching effect of a head is normalised by the MEAN gap between clean and ABC
logit differences (``(patched_i - clean_i) / (mean clean - mean ABC)`` when noising), not per prompt, since
a prompt whose clean and ABC logit differences happen to be close would otherwise dominate the mean. Mean
ablation uses, per template, token length and position, the mean head output over a SEPARATE reference
sample of ABC prompts (:func:`abc_reference`: 32 draws per template by default, its own seed, the evaluated
prompts' corruptions excluded), so a prompt's ablation is a mean and not its own ABC run (Wang et al. average
per template position too).

The circuit found on SmolLM2-135M is SmolLM2's own; nothing here claims it matches the GPT-2 small circuit
of Wang et al. (GPT-2 small cannot be installed offline, so no comparison was made).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from mlsafety.core import InputError, LanguageModel, Progress
from mlsafety.metrics import Estimate, bootstrap_mean, bootstrap_weighted, proportion
from mlsafety.monitoring.interp._common import as_lm, chunks, encode_left, forward_last
from mlsafety.monitoring.interp.attention import attention_patterns
from mlsafety.monitoring.interp.interventions import ablated, cache
from mlsafety.monitoring.interp.ioi import IOIDataset, ioi_dataset
from mlsafety.monitoring.interp.metrics import logit_diff, t_interval
from mlsafety.monitoring.interp.patching import Direction, head_patching

Head = tuple[int, int]
"""``(layer, head)``."""

ATTENTION_METHOD = (
    "softmax probabilities returned by the model's eager attention (transformers output_attentions), one per query head"
)


@dataclass(frozen=True)
class HeadScore:
    """One head of the circuit.

    Attributes:
        layer, head: where it is.
        effect: the mean patching effect over prompts (normalised by the mean clean - ABC gap) with its 95%
            bootstrap interval. A head whose clean output helps IO over S gives a negative effect when
            noising (its ABC output lowers the clean run) and a positive one when denoising.
        attention: ``{"IO", "S1", "S2"}`` -> the mean attention probability from END to that token, with a
            95% bootstrap interval over prompts.
    """

    layer: int
    head: int
    effect: Estimate
    attention: dict[str, Estimate]


@dataclass(frozen=True)
class CircuitReport:
    """What :func:`ioi_circuit_report` measured.

    Attributes:
        n_prompts: prompts in the dataset.
        logit_diff_clean, logit_diff_corrupted: mean ``logit(IO) - logit(S)`` at END on clean and ABC prompts
            (95% bootstrap intervals).
        io_preferred: the share of clean prompts where ``logit(IO) > logit(S)`` (exact Clopper-Pearson).
        io_preferred_corrupted: the same share on the ABC prompts (about one half when the corruption works).
        effect, effect_low, effect_high: ``(layers, heads)`` mean patching effect and its Student-t 95%
            interval over prompts (see :class:`HeadScore`).
        direction: ``"noise"`` (clean run, a head's ABC output patched in) or ``"denoise"`` (the reverse).
        positions: ``"all"`` or ``"end"``: where each head was patched.
        heads: the ``top_k`` heads by ``|effect|``, largest first.
        faithfulness: ``{k: F(top k heads) / F(model)}`` with 95% bootstrap intervals; ``k = 0`` is every
            head mean-ablated.
        attention_method: how the attention probabilities were obtained.
        reference_prompts: ABC prompts in the separate reference sample behind the means (0: none needed).
        reference_counts: ``(N,)`` reference prompts (same template and length) behind each prompt's mean.
    """

    n_prompts: int
    logit_diff_clean: Estimate
    logit_diff_corrupted: Estimate
    io_preferred: Estimate
    io_preferred_corrupted: Estimate
    effect: torch.Tensor
    effect_low: torch.Tensor
    effect_high: torch.Tensor
    direction: Direction
    positions: str
    heads: list[HeadScore]
    faithfulness: dict[int, Estimate]
    attention_method: str = ATTENTION_METHOD
    reference_prompts: int = 0
    reference_counts: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (estimates as ``[value, low, high, n]``)."""

        def est(e: Estimate) -> list[float]:
            return [e.value, e.ci_low, e.ci_high, e.n]

        return {
            "n_prompts": self.n_prompts,
            "logit_diff_clean": est(self.logit_diff_clean),
            "logit_diff_corrupted": est(self.logit_diff_corrupted),
            "io_preferred": est(self.io_preferred),
            "io_preferred_corrupted": est(self.io_preferred_corrupted),
            "direction": self.direction,
            "positions": self.positions,
            "effect": self.effect.tolist(),
            "effect_low": self.effect_low.tolist(),
            "effect_high": self.effect_high.tolist(),
            "heads": [
                {
                    "layer": h.layer,
                    "head": h.head,
                    "effect": est(h.effect),
                    "attention": {k: est(v) for k, v in h.attention.items()},
                }
                for h in self.heads
            ],
            "faithfulness": {str(k): est(v) for k, v in self.faithfulness.items()},
            "attention_method": self.attention_method,
            "reference_prompts": self.reference_prompts,
            "reference_counts": self.reference_counts.tolist(),
        }


def _check_data(data: IOIDataset) -> None:
    if not isinstance(data, IOIDataset):
        raise InputError(f"data must be an IOIDataset (from ioi_dataset), got {type(data).__name__}")


def logit_diffs(
    model: LanguageModel | nn.Module, texts: Sequence[str], data: IOIDataset, batch_size: int = 32
) -> torch.Tensor:
    """``logit(IO) - logit(S)`` at the last token of each of ``texts`` (``data``'s clean or ABC prompts): ``(N,)``."""
    lm = as_lm(model)
    batch = encode_left(lm, texts)
    out = []
    with torch.no_grad():
        for start, stop in chunks(len(texts), batch_size):
            logits = forward_last(lm, batch.input_ids[start:stop], batch.attention_mask[start:stop])
            out.append(logit_diff(logits, data.io_ids[start:stop], data.s_ids[start:stop]).cpu())
    return torch.cat(out)


def abc_reference(
    model: LanguageModel | nn.Module, data: IOIDataset, per_template: int = 32, seed: int = 0
) -> IOIDataset:
    """A separate sample of IOI prompts for the ABC means: ``per_template`` x templates draws, own seed.

    Each template gets its own :func:`~mlsafety.monitoring.interp.ioi.ioi_dataset` draw from ``data``'s words
    (seed offset by :data:`REFERENCE_SEED_OFFSET` per template), and every draw whose ABC prompt is one of
    ``data``'s is removed, so the mean ablating a prompt's heads
    never holds that prompt's own corruption.
    """
    _check_data(data)
    if data.vocabulary is None:
        raise InputError("data has no vocabulary (it was not made by ioi_dataset): pass reference= explicitly")
    if not isinstance(per_template, int) or per_template < 1:
        raise InputError(f"per_template must be a positive integer, got {per_template!r}")
    names, places, objects = data.vocabulary
    used = set(data.corrupted)
    parts = []
    for t, text in enumerate(data.template_texts):
        part = ioi_dataset(
            as_lm(model),
            n=per_template,
            seed=REFERENCE_SEED_OFFSET * (t + 1) + int(seed),
            names=names,
            places=places,
            objects=objects,
            templates=[text],
        )
        keep = [i for i, abc in enumerate(part.corrupted) if abc not in used]
        parts.append(replace(_subset(part, keep), templates=[t] * len(keep)))
    return _concat(parts, data)


REFERENCE_SEED_OFFSET = 7919
"""Added to the report's seed for the reference draw, so it does not repeat the evaluated prompts' draw."""


def _subset(data: IOIDataset, rows: list[int]) -> IOIDataset:
    idx = torch.tensor(rows, dtype=torch.int64)
    return IOIDataset(
        prompts=[data.prompts[i] for i in rows],
        corrupted=[data.corrupted[i] for i in rows],
        io_ids=data.io_ids[idx],
        s_ids=data.s_ids[idx],
        io_names=[data.io_names[i] for i in rows],
        s_names=[data.s_names[i] for i in rows],
        positions={k: v[idx] for k, v in data.positions.items()},
        lengths=data.lengths[idx],
        templates=[data.templates[i] for i in rows],
        orders=[data.orders[i] for i in rows],
        template_texts=data.template_texts,
        vocabulary=data.vocabulary,
    )


def _concat(parts: list[IOIDataset], like: IOIDataset) -> IOIDataset:
    def cat(attr: str) -> list[Any]:
        return [x for part in parts for x in getattr(part, attr)]

    return IOIDataset(
        prompts=cat("prompts"),
        corrupted=cat("corrupted"),
        io_ids=torch.cat([p.io_ids for p in parts]),
        s_ids=torch.cat([p.s_ids for p in parts]),
        io_names=cat("io_names"),
        s_names=cat("s_names"),
        positions={k: torch.cat([p.positions[k] for p in parts]) for k in like.positions},
        lengths=torch.cat([p.lengths for p in parts]),
        templates=cat("templates"),
        orders=cat("orders"),
        template_texts=like.template_texts,
        vocabulary=like.vocabulary,
    )


def _groups(data: IOIDataset) -> list[tuple[int, int]]:
    return [(t, int(n)) for t, n in zip(data.templates, data.lengths.tolist(), strict=True)]


def reference_counts(data: IOIDataset, reference: IOIDataset) -> torch.Tensor:
    """``(N,)``: how many reference ABC prompts (same template and token length) make each prompt's mean."""
    counts: dict[tuple[int, int], int] = {}
    for key in _groups(reference):
        counts[key] = counts.get(key, 0) + 1
    return torch.tensor([counts.get(key, 0) for key in _groups(data)], dtype=torch.int64)


def abc_means(
    model: LanguageModel | nn.Module,
    data: IOIDataset,
    reference: IOIDataset | None = None,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Per-template, per-position mean head outputs over a separate ABC sample, laid out for the clean batch.

    Args:
        model: the language model.
        data: the evaluated prompts.
        reference: the prompts whose ABC corruptions are averaged (:func:`abc_reference` of ``data`` when
            None). Prompt ``i``'s mean is over the reference prompts with its template and its token length.
        batch_size: prompts per forward pass.

    Returns:
        ``{"blocks.{i}.head_out": (N, L, H, d_head)}``: row ``i`` holds, at each of prompt ``i``'s real token
        positions (left-padded to the longest prompt, as the interp methods run prompts), the mean head output
        at that position; padding is 0.

    Raises:
        InputError: a prompt whose template and length no reference prompt shares.
    """
    lm = as_lm(model)
    _check_data(data)
    reference = abc_reference(lm, data) if reference is None else reference
    _check_data(reference)
    counts = reference_counts(data, reference)
    if bool((counts == 0).any()):
        i = int((counts == 0).nonzero()[0, 0])
        raise InputError(
            f"prompt {i} (template {data.templates[i]}, {int(data.lengths[i])} tokens) has no reference ABC prompt "
            "of the same template and length: draw a larger reference sample"
        )
    names = [f"blocks.{i}.head_out" for i in range(lm.n_layers)]
    needed = set(_groups(data))
    ref_keys = _groups(reference)
    rows = [i for i, key in enumerate(ref_keys) if key in needed]
    sums: dict[str, dict[tuple[int, int], torch.Tensor]] = {name: {} for name in names}
    for start, stop in chunks(len(rows), batch_size):
        part = rows[start:stop]
        recorded = cache(lm, [reference.corrupted[i] for i in part], names, batch_size)
        width = recorded.batch.input_ids.shape[1]
        for j, i in enumerate(part):
            key = ref_keys[i]
            for name in names:
                act = recorded[name][j, width - key[1] :].double()
                sums[name][key] = sums[name][key] + act if key in sums[name] else act
    n_ref: dict[tuple[int, int], int] = {}
    for i in rows:
        n_ref[ref_keys[i]] = n_ref.get(ref_keys[i], 0) + 1
    width = int(data.lengths.max())
    out: dict[str, torch.Tensor] = {}
    for name in names:
        first = next(iter(sums[name].values()))
        means = torch.zeros(len(data), width, *first.shape[1:])
        for i, key in enumerate(_groups(data)):
            means[i, width - key[1] :] = (sums[name][key] / n_ref[key]).float()
        out[name] = means
    return out


def _ablate_map(lm: LanguageModel, circuit: Iterable[Head]) -> dict[str, list[int]]:
    """``{head_out name: heads to ablate}`` for every layer with a head outside ``circuit``."""
    n_layers, n_heads = lm.n_layers, lm.points.n_heads
    kept: set[Head] = set()
    for layer, head in circuit:
        if not (0 <= int(layer) < n_layers and 0 <= int(head) < n_heads):
            raise InputError(f"head ({layer}, {head}) is not in this model's {n_layers} layers x {n_heads} heads")
        kept.add((int(layer), int(head)))
    out: dict[str, list[int]] = {}
    for layer in range(n_layers):
        heads = [h for h in range(n_heads) if (layer, h) not in kept]
        if heads:
            out[f"blocks.{layer}.head_out"] = heads
    return out


def circuit_logit_diffs(
    model: LanguageModel | nn.Module,
    data: IOIDataset,
    circuit: Iterable[Head],
    means: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """``logit(IO) - logit(S)`` on the clean prompts with every head outside ``circuit`` mean-ablated: ``(N,)``.

    Args:
        model: the language model.
        data: the IOI prompts.
        circuit: ``(layer, head)`` pairs kept; every other head's output is replaced by its ABC mean.
        means: :func:`abc_means` of ``data`` (computed from :func:`abc_reference` when None).
        batch_size: prompts per forward pass.
    """
    lm = as_lm(model)
    _check_data(data)
    plan = _ablate_map(lm, circuit)
    if not plan:
        return logit_diffs(lm, data.prompts, data, batch_size)
    means = abc_means(lm, data, batch_size=batch_size) if means is None else means
    batch = encode_left(lm, data.prompts)
    out = []
    with torch.no_grad():
        for start, stop in chunks(len(data), batch_size):
            part = {name: means[name][start:stop] for name in plan}
            with ablated(lm, list(plan), "mean", means=part, heads=plan):
                logits = forward_last(lm, batch.input_ids[start:stop], batch.attention_mask[start:stop])
            out.append(logit_diff(logits, data.io_ids[start:stop], data.s_ids[start:stop]).cpu())
    return torch.cat(out)


def faithfulness(
    circuit_ld: torch.Tensor, model_ld: torch.Tensor, seed: int = 0, name: str = "faithfulness"
) -> Estimate:
    """``mean(circuit_ld) / mean(model_ld)`` with a paired 95% percentile-bootstrap interval over prompts."""
    if circuit_ld.shape != model_ld.shape or circuit_ld.ndim != 1:
        raise InputError(
            f"circuit and model logit differences must be (N,) each, got {tuple(circuit_ld.shape)} and "
            f"{tuple(model_ld.shape)}"
        )
    a, b = circuit_ld.double().cpu(), model_ld.double().cpu()
    if float(b.mean()) == 0.0:
        raise InputError("the model's mean logit difference is 0, so faithfulness (a ratio to it) is undefined")
    return bootstrap_weighted(
        lambda w: (w @ a) / (w @ b), len(a), seed=seed, name=name, value=float(a.mean() / b.mean())
    )


def end_attention(
    model: LanguageModel | nn.Module,
    data: IOIDataset,
    heads: Sequence[Head],
    batch_size: int = 32,
) -> dict[Head, torch.Tensor]:
    """The attention probability from END to IO, S1 and S2 for each head: ``{(layer, head): (N, 3)}``."""
    lm = as_lm(model)
    _check_data(data)
    if not heads:
        return {}
    patterns = attention_patterns(lm, data.prompts, [layer for layer, _ in heads], batch_size)
    width = next(iter(patterns.values())).shape[-1]
    offset = width - data.lengths
    rows = torch.arange(len(data))
    cols = torch.stack([offset + data.positions[k] for k in ("IO", "S1", "S2")], dim=1)  # (N, 3)
    out: dict[Head, torch.Tensor] = {}
    for layer, head in heads:
        from_end = patterns[layer][rows, head, width - 1]  # (N, L)
        out[(layer, head)] = from_end.gather(1, cols)
    return out


def ioi_circuit_report(
    model: LanguageModel | nn.Module,
    data: IOIDataset,
    top_k: int = 10,
    circuit_sizes: Sequence[int] | None = None,
    direction: Direction = "noise",
    positions: Literal["all", "end"] = "all",
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
    reference_per_template: int = 32,
) -> CircuitReport:
    """The IOI circuit report of a causal LM (see the module docstring for what is measured and how).

    Args:
        model: a :class:`~mlsafety.core.LanguageModel` (or a ``transformers`` causal LM with ``.tokenizer``)
            whose eager attention can return probabilities.
        data: :func:`~mlsafety.monitoring.interp.ioi.ioi_dataset` prompts for this model's tokenizer.
        top_k: heads reported with their attention patterns.
        circuit_sizes: the ``k`` whose top-``k`` circuit's faithfulness is measured; None: ``0`` and ``top_k``.
        direction: ``"noise"``: run the clean prompt with one head's ABC output patched in (what the head is
            needed for); ``"denoise"``: the reverse.
        positions: ``"all"``: patch each head at every position; ``"end"``: at END only.
        batch_size: rows per forward pass.
        seed: seeds the bootstrap intervals and the reference ABC sample.
        progress: shows the patching sweep's progress.
        reference_per_template: draws per template of the reference ABC sample behind the mean ablation.

    Returns:
        A :class:`CircuitReport`.

    Raises:
        InputError: a ``top_k`` or circuit size outside ``[0, layers x heads]``, an unknown direction or
            positions value, data that is not an :class:`IOIDataset`.

    Example:
        >>> lm = mlsafety.zoo.load_language_model("smollm2-135m")
        >>> report = ioi_circuit_report(lm, ioi_dataset(lm, n=64), top_k=10, circuit_sizes=[5, 10, 20])
        >>> report.faithfulness[10]
    """
    lm = as_lm(model)
    _check_data(data)
    n_layers, n_heads = lm.n_layers, lm.points.n_heads
    total = n_layers * n_heads
    if not isinstance(top_k, int) or not 0 <= top_k <= total:
        raise InputError(f"top_k must be an integer in [0, {total}] (layers x heads), got {top_k!r}")
    sizes = [0, top_k] if circuit_sizes is None else [int(k) for k in circuit_sizes]
    if any(not 0 <= k <= total for k in sizes):
        raise InputError(f"circuit_sizes must lie in [0, {total}] (layers x heads), got {list(sizes)!r}")
    if positions not in ("all", "end"):
        raise InputError(f"positions must be 'all' or 'end', got {positions!r}")

    result = head_patching(
        lm,
        data.prompts,
        data.corrupted,
        data.io_ids,
        data.s_ids,
        positions=None if positions == "all" else [-1],
        direction=direction,
        batch_size=batch_size,
        progress=progress,
    )
    clean, corrupted = result.clean.values, result.corrupted.values
    gap = float(clean.mean() - corrupted.mean())
    if abs(gap) < 1e-6:
        raise InputError(
            "the clean and ABC prompts give the same mean logit difference, so no head can be ranked: "
            "the model does not do the IOI task on these prompts"
        )
    base = clean if direction == "noise" else corrupted
    effects = (result.raw - base[:, None, None]) / gap  # (N, layers, heads)
    mean, low, high = t_interval(effects)

    order = mean.abs().reshape(-1).argsort(descending=True).tolist()
    ranked: list[Head] = [(i // n_heads, i % n_heads) for i in order]
    top = ranked[:top_k]
    attention = end_attention(lm, data, top, batch_size)
    heads = [
        HeadScore(
            layer,
            head,
            bootstrap_mean(effects[:, layer, head], seed=seed, name=f"ioi-effect-{layer}-{head}"),
            {
                key: bootstrap_mean(attention[(layer, head)][:, j], seed=seed, name=f"ioi-attn-{layer}-{head}-{key}")
                for j, key in enumerate(("IO", "S1", "S2"))
            },
        )
        for layer, head in top
    ]

    means, counts, n_reference = None, torch.zeros(0, dtype=torch.int64), 0
    if any(k < total for k in sizes):
        reference = abc_reference(lm, data, reference_per_template, seed)
        counts, n_reference = reference_counts(data, reference), len(reference)
        means = abc_means(lm, data, reference, batch_size=batch_size)
    model_ld = logit_diffs(lm, data.prompts, data, batch_size)  # the same passes as a circuit of every head
    faith = {
        k: faithfulness(circuit_logit_diffs(lm, data, ranked[:k], means, batch_size), model_ld, seed, f"ioi-faith-{k}")
        for k in dict.fromkeys(sizes)
    }
    return CircuitReport(
        n_prompts=len(data),
        logit_diff_clean=_mean(clean, seed, "clean"),
        logit_diff_corrupted=_mean(corrupted, seed, "corrupted"),
        io_preferred=proportion(clean > 0),
        io_preferred_corrupted=proportion(corrupted > 0),
        effect=mean,
        effect_low=low,
        effect_high=high,
        direction=direction,
        positions=positions,
        heads=heads,
        faithfulness=faith,
        reference_prompts=n_reference,
        reference_counts=counts,
    )


def _mean(values: torch.Tensor, seed: int, name: str) -> Estimate:
    return bootstrap_mean(values, seed=seed, name=f"ioi-logit-diff-{name}")
