"""One batched forward pass that returns logits and features together (and, when asked, named
intermediate activations: :func:`tap_layers`, :func:`block_layers`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn

from mlsafety.core._errors import InputError
from mlsafety.core._model import ModelLike, as_classifier, frozen
from mlsafety.core._progress import Progress, track
from mlsafety.core._text import TextBatch, Texts


@dataclass(frozen=True)
class Outputs:
    """What one forward pass over a set of inputs gives: logits ``(N, K)``, features ``(N, D)``.

    ``features`` is None when the model has no head (no layer with weights produces the logits; see
    :meth:`~mlsafety.core.Classifier.trace`). Tensors live on the model's device.
    ``truncated`` counts the texts cut at the model's maximum length (0 for images).
    ``layers`` holds named intermediate activations when the pass was asked for them (``layers=`` of
    :func:`forward`), each ``(N, ...)`` as its reduction left it; None otherwise.
    """

    logits: torch.Tensor
    features: torch.Tensor | None
    truncated: int = 0
    layers: Mapping[str, torch.Tensor] | None = None

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


def forward(
    model: ModelLike,
    x: torch.Tensor | Texts | TextBatch | Sequence[str],
    batch_size: int = 256,
    features: bool = True,
    progress: Progress | None = None,
    layers: LayerRequest | None = None,
) -> Outputs:
    """Logits (and features, from the same pass) for ``x`` in batches, in eval mode, no gradients.

    Logits that are not finite raise :class:`InputError` (a metric computed from them would be
    meaningless, and the error would otherwise surface later as a misleading one about inputs).

    Args:
        model: the classifier.
        x: inputs (N, ...) on any device (batches move to the model's device); or, for a text model,
            texts (tokenised per batch by the classifier, padded to each batch's longest; batches
            are formed from texts of similar length, the outputs keep the order of ``x``) or a
            ``TextBatch``.
        batch_size: inputs per forward pass.
        features: also capture the head's input features.
        progress: show progress when given.
        layers: named intermediate activations to return in :attr:`Outputs.layers` from the same pass
            (see :data:`LayerRequest`); None (the default) takes none and installs no hook.
    """
    clf = as_classifier(model)
    if not isinstance(x, (torch.Tensor, TextBatch)):
        x = Texts(x)
    want_feats = features and (clf.head is not None or clf.head_info is None)  # untraced: the first batch traces
    logits, feats = [], []
    device = clf.device
    order: torch.Tensor | None = None
    if isinstance(x, Texts) and len(x) > batch_size:  # batch texts of like length: less padding to compute
        order = torch.tensor(sorted(range(len(x)), key=lambda i: len(x[i])), dtype=torch.long)
        x = x[order]
    n = len(x)
    starts = range(0, n, batch_size)
    truncated = 0
    taps = as_taps(layers)
    tapped: dict[str, list[torch.Tensor]] = {k: [] for k in taps}
    with frozen(clf.module), torch.inference_mode(), tap_layers(clf.module, taps) as tap:
        for start in track(starts, progress, "forward", total=len(starts)):
            xb: torch.Tensor | TextBatch
            if isinstance(x, Texts):
                xb = clf.encode(x[start : start + batch_size]).to(device)
            else:
                xb = x[start : start + batch_size].to(device)
            if isinstance(xb, TextBatch):
                truncated += int(xb.truncated.sum())
            if want_feats:
                fb, lb = clf.maybe_features_and_logits(xb)  # traces the head on the first batch
                if fb is None:  # tracing found no layer with weights that gives the logits
                    want_feats = False
                else:
                    feats.append(fb)
            else:
                lb = clf.logits(xb)
            logits.append(lb)
            for key, act in tap.take(lb.shape[0]).items():
                tapped[key].append(act)
    if not logits:
        k = clf.num_classes
        return Outputs(torch.empty(0, k, device=device), None)
    acts = {k: torch.cat(v) for k, v in tapped.items()} if taps else None
    out = torch.cat(logits)
    feat = torch.cat(feats) if want_feats else None
    if order is not None:  # back to the caller's order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        inverse = inverse.to(out.device)
        out = out[inverse]
        feat = None if feat is None else feat[inverse]
        acts = None if acts is None else {k: v[inverse.to(v.device)] for k, v in acts.items()}
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise InputError(
            f"the model returned NaN or infinite logits for {int(bad.sum())} of {out.shape[0]} inputs "
            f"(the first at index {first}); fix the model before measuring it"
        )
    return Outputs(out, feat, truncated, acts)


# -- intermediate activations ---------------------------------------------------------------------
LayerReduce: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
"""What is kept of a layer's output ``(N, ...)`` in each batch: a function giving ``(N, ...)`` (e.g.
:func:`pool_map`); it runs inside the hook, so a large map need not be held for the whole input set."""

LayerRequest: TypeAlias = "Sequence[str] | Mapping[str, tuple[str, LayerReduce]]"
"""Intermediate activations asked of a pass: module names (each kept as :func:`pool_map` of its output,
under its own name), or ``{key: (module name, reduce)}``."""


def pool_map(x: torch.Tensor) -> torch.Tensor:
    """A layer's output as one vector per input: a map ``(N, C, *spatial)`` averaged over its spatial
    dimensions (global average pooling), a vector ``(N, D)`` as it is."""
    return x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x.reshape(x.shape[0], -1)


def bounded_map(max_elements: int) -> LayerReduce:
    """A reduction that keeps a layer's output unpooled, refusing (one line) a map of more than
    ``max_elements`` numbers per input, so an unpooled request cannot exhaust memory unnoticed."""

    def keep(x: torch.Tensor) -> torch.Tensor:
        per = x[0].numel() if x.shape[0] else 0
        if per > max_elements:
            raise InputError(
                f"a layer's unpooled output has {per} numbers per input, more than the {max_elements} allowed; "
                "choose a later (smaller) layer with layers=[...]"
            )
        return x

    return keep


def as_taps(layers: LayerRequest | None) -> dict[str, tuple[str, LayerReduce]]:
    """:data:`LayerRequest` as ``{key: (module name, reduce)}`` (module names: pooled, keyed by name)."""
    if layers is None:
        return {}
    if isinstance(layers, Mapping):
        return dict(layers)
    if isinstance(layers, str):
        layers = [layers]
    return {name: (name, pool_map) for name in layers}


class _Tap:
    """The activations hooked during one batch, reduced; :meth:`take` hands them over and clears them."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.latest: dict[str, torch.Tensor] = {}
        self.keys = list(keys)

    def take(self, n: int) -> dict[str, torch.Tensor]:
        missing = [k for k in self.keys if k not in self.latest]
        if missing:
            raise InputError(f"layers {missing} were not called during the forward pass; choose layers the model runs")
        got, self.latest = self.latest, {}
        for k, v in got.items():
            if v.shape[0] != n:
                raise InputError(f"layer output {k!r} has {v.shape[0]} rows for {n} inputs; choose a per-input layer")
        return got


def check_layer_names(module: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The named submodules; an :class:`InputError` naming a missing one and the valid names."""
    named = dict(module.named_modules())
    out = {}
    for name in names:
        if not name or name not in named:
            valid = [n for n in named if n]
            shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
            raise InputError(f"the model has no layer named {name!r}; its layers are: {shown or 'none'}")
        out[name] = named[name]
    return out


@contextlib.contextmanager
def tap_layers(module: nn.Module, layers: LayerRequest | None, strict: bool = True) -> Iterator[_Tap]:
    """Forward hooks that keep the (reduced) outputs of named layers of ``module`` for each batch.

    Call ``tap.take(n)`` after each forward pass for ``{key: (n, ...)}``. A layer called several times
    in one pass (a module reused) keeps its last output. The hooks are removed on exit, also when the
    body raises; with no layers, nothing is installed. With ``strict`` False, a layer that returns no
    tensor is left out instead of failing the pass (for probing every module).

    Raises:
        InputError: a name that is not a submodule (naming the valid ones).
    """
    taps = as_taps(layers)
    tap = _Tap(list(taps))
    if not taps:  # every plain forward pass comes through here: no module walk, no hook
        yield tap
        return
    mods = check_layer_names(module, sorted({name for name, _ in taps.values()}))
    handles = []

    def hook_for(name: str) -> Any:
        keys = [(k, reduce) for k, (n, reduce) in taps.items() if n == name]

        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            out = output if isinstance(output, torch.Tensor) else _first(output)
            if out is None:
                if not strict:
                    return
                raise InputError(f"layer {name!r} returns no tensor; choose another layer")
            for k, reduce in keys:
                tap.latest[k] = reduce(out)

        return hook

    try:
        for name, mod in mods.items():
            handles.append(mod.register_forward_hook(hook_for(name)))
        yield tap
    finally:
        for h in handles:
            h.remove()


def _first(value: Any) -> torch.Tensor | None:
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_block_start(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.ndim >= 2  # a Linear or a convolution (not a norm layer)


def _plain_sequential(module: nn.Module) -> bool:
    subs = list(module.children())
    return isinstance(module, nn.Sequential) and bool(subs) and all(not list(c.children()) for c in subs)


def _stage_ends(module: nn.Module, prefix: str, head: str | None) -> list[str]:
    """The last layer of each stage of a plain ``nn.Sequential`` (a stage begins at a layer with a weight
    matrix); stages from the head on are left out."""
    ends: list[str] = []
    stage_end: str | None = None
    for sub, layer in module.named_children():
        full = f"{prefix}{sub}"
        if full == head:
            return [*ends, stage_end] if stage_end is not None else ends
        if _is_block_start(layer) and stage_end is not None:
            ends.append(stage_end)
        if stage_end is not None or _is_block_start(layer):
            stage_end = full
    if stage_end is not None:
        ends.append(stage_end)
    return ends


def block_layers(module: nn.Module, head: str | None = None) -> list[str]:
    """The default intermediate layers of a model: the outputs of its blocks, in the order registered.

    The rule: take the model's top-level children that hold parameters (parameter-free children such as
    activations, pooling, dropout or a normalisation of the input give no new representation), leaving
    out the head (``head``, a dotted name) and any child that contains it. A child that is an
    ``nn.Sequential`` of plain layers (no nested blocks) is split into stages, each beginning at a layer
    with a weight matrix (Linear, convolution) and ending just before the next one: the stage's last
    layer (e.g. the ReLU or pooling after a convolution and its batch norm) is taken. So a zoo CNN
    ``features = Sequential(conv, bn, relu, pool, conv, ...)`` gives one layer per conv stage, and a
    ResNet gives ``conv1``, ``bn1``, ``layer1`` ... ``layer4``. A model that is itself such a plain
    ``nn.Sequential`` is split the same way, up to its head. Pass ``layers=[names]`` to a detector to
    choose others.
    """
    if _plain_sequential(module):
        return _stage_ends(module, "", head)
    names: list[str] = []
    for name, child in module.named_children():
        if head is not None and (name == head or head.startswith(name + ".")):
            continue
        if not _has_params(child):
            continue
        if _plain_sequential(child):
            names.extend(_stage_ends(child, f"{name}.", head))
        else:
            names.append(name)
    return names
