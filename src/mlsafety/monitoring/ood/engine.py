"""The shared-pass engine: one forward pass feeds every detector, and work they share is done once.

:func:`collect_outputs` makes the pass (logits and, where the head allows, penultimate features);
:func:`fit_detectors` and :func:`score_detectors` feed every detector that needs no more than that
from it. Within one engine call, :func:`reuse` computes each intermediate result once (the class
Gaussians of Mahalanobis and RMD, the principal subspace of Residual and ViM, the similarity search
of KNN and NNGuide), in a cache that lives only inside a :func:`sharing` block.

Detectors that also read intermediate layers (need ``layers``: Gram, MDS ensemble) are fed from the
same pass: the engine asks each for its layer requests, installs forward hooks for their union only
when one of them is in the call (:func:`collect_outputs` ``layers=``), and removes the hooks when the
pass ends, also on errors. When the caller hands over outputs already computed (the audit's shared
pass, which has no layers), the layered detectors get one pass of their own, together.

Example:
    >>> many = [create(n) for n in ("msp", "knn", "vim")]
    >>> fit_detectors(many, model, train_data)
    >>> score_detectors(many, model, x)  # {"msp": ..., "knn": ..., "vim": ...}, one forward pass
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import torch

from mlsafety.core import (
    DataLike,
    InputError,
    LayerReduce,
    ModelLike,
    Outputs,
    as_classifier,
    frozen,
    iter_batches,
    tap_layers,
)

if TYPE_CHECKING:
    from mlsafety.monitoring.ood.base import Detector

FitData: TypeAlias = "DataLike"
"""In-distribution data, any form of :data:`mlsafety.core.DataLike`: an ArrayDataset, a torch Dataset
of ``(x, y)`` (or ``x``), a DataLoader of ``(x, y)`` or ``x`` batches, ``x`` or ``(x, y)``; labels are
optional (the model's predictions stand in)."""

T = TypeVar("T")


# -- data plumbing -----------------------------------------------------------------------------
def labels_or_pred(labels: torch.Tensor | None, outputs: Outputs) -> torch.Tensor:
    """``labels`` (N,) where known (``>= 0``), the model's predicted classes elsewhere (or everywhere)."""
    pred = outputs.logits.argmax(dim=1)
    if labels is None:
        return pred
    labels = labels.to(pred.device).long()
    if labels.shape != pred.shape:
        raise InputError(f"labels have shape {tuple(labels.shape)} but there are {pred.shape[0]} inputs")
    return torch.where(labels >= 0, labels, pred)


def collect_inputs(data: FitData) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All inputs (and labels when known) of ``data`` as two tensors."""
    xs, ys = [], []
    for xb, yb in iter_batches(data, 4096, "data", labelled=False):
        xs.append(xb)
        ys.append(yb)
    if not xs:
        raise InputError("the data is empty: give at least one in-distribution input")
    y = None if any(yb is None for yb in ys) else torch.cat([yb for yb in ys if yb is not None])
    return torch.cat(xs), y


def collect_outputs(
    model: ModelLike,
    data: FitData,
    batch_size: int = 256,
    features: bool = True,
    layers: dict[str, tuple[str, LayerReduce]] | None = None,
) -> tuple[Outputs, torch.Tensor | None]:
    """One forward pass over ``data`` in eval mode: logits and (optionally) features, plus labels.

    ``layers`` (``{key: (module name, reduce)}``, see :func:`mlsafety.core.tap_layers`) adds those
    intermediate activations from the same pass as :attr:`~mlsafety.core.Outputs.layers`; None hooks nothing.
    """
    clf = as_classifier(model)
    want = features and (clf.head is not None or clf.head_info is None)  # untraced: the first batch traces
    logits, feats, labels = [], [], []
    have_labels = True
    device = clf.device
    acts: dict[str, list[torch.Tensor]] = {k: [] for k in layers or {}}
    with frozen(clf.module), torch.inference_mode(), tap_layers(clf.module, layers) as tap:
        for xb, yb in iter_batches(data, batch_size, "data", labelled=False):
            xb = xb.to(device)
            if want:
                fb, lb = clf.maybe_features_and_logits(xb)  # the first batch traces the head
                if fb is None:  # no layer with weights gives the logits: no features
                    want = False
                else:
                    feats.append(fb)
            else:
                lb = clf.logits(xb)
            logits.append(lb)
            for k, v in tap.take(lb.shape[0]).items():
                acts[k].append(v)
            if yb is None:
                have_labels = False
            else:
                labels.append(yb.to(device))
    if not logits:
        raise InputError("the data is empty: give at least one input")
    taken = {k: torch.cat(v) for k, v in acts.items()} if layers else None
    out = Outputs(torch.cat(logits), torch.cat(feats) if want else None, layers=taken)
    return out, (torch.cat(labels) if have_labels and labels else None)


# -- the engine ----------------------------------------------------------------------------------
def fit_detectors(
    detectors: Sequence[Detector],
    model: ModelLike,
    data: FitData,
    batch_size: int = 256,
    outputs: Outputs | None = None,
    labels: torch.Tensor | None = None,
) -> list[Detector]:
    """Fit every detector on in-distribution ``data``; one forward pass feeds all shared ones.

    Args:
        detectors: detectors to fit (in place).
        model: the classifier.
        data: in-distribution data (see :data:`FitData`).
        batch_size: inputs per forward pass.
        outputs: forward outputs of ``data`` already computed (then no pass is made for the
            shared detectors); ``labels`` go with them.
        labels: labels of ``outputs``.
    """
    clf = as_classifier(model)
    taps = layer_taps(detectors, clf)
    if any(d.shared for d in detectors) or taps:
        if outputs is None:
            outputs, labels = collect_outputs(clf, data, batch_size, layers=taps or None)
        louts, llabels = outputs, labels
        if taps and not _has_layers(outputs, taps):  # given outputs without layers: one pass for the layered
            louts, llabels = collect_outputs(clf, data, batch_size, layers=taps)
        with sharing():
            for det in detectors:
                if det.shared:
                    det.fit_outputs(clf, outputs, labels)
                elif det.layered:
                    det.fit_outputs(clf, louts, llabels)
    for det in detectors:
        if not (det.shared or det.layered):
            det.fit(clf, data, batch_size)
    return list(detectors)


def score_detectors(
    detectors: Sequence[Detector],
    model: ModelLike,
    x: torch.Tensor | None = None,
    batch_size: int = 256,
    outputs: Outputs | None = None,
) -> dict[str, torch.Tensor]:
    """Anomaly scores of every detector for the same inputs, keyed by :func:`detector_keys` (registry
    names, in the order given).

    Detectors that need only logits and features are all fed from one forward pass (or from
    ``outputs`` when given); the others run on ``x`` on their own.
    """
    clf = as_classifier(model)
    keys = detector_keys([d.name for d in detectors])
    scores: dict[int, torch.Tensor] = {}
    taps = layer_taps(detectors, clf)
    if taps and x is None and (outputs is None or not _has_layers(outputs, taps)):
        named = [d.name for d in detectors if d.layered]
        raise InputError(f"detectors {named} need intermediate layers: give the inputs x, not only forward outputs")
    if any(d.shared for d in detectors) or taps:
        if outputs is None:
            if x is None:
                raise InputError("give inputs x or forward outputs")
            outputs, _ = collect_outputs(clf, x, batch_size, layers=taps or None)
        louts = outputs
        if taps and not _has_layers(outputs, taps):  # given outputs without layers: one pass for the layered
            assert x is not None  # checked above
            louts, _ = collect_outputs(clf, x, batch_size, layers=taps)
        with sharing():
            for det in detectors:
                if det.shared and getattr(det, "fitted_", False):
                    det.plan(outputs)
            for i, det in enumerate(detectors):
                if det.shared:
                    scores[i] = det.score_outputs(clf, outputs)
                elif det.layered:
                    scores[i] = det.score_outputs(clf, louts)
    others = [d.name for d in detectors if not (d.shared or d.layered)]
    if others and x is None:
        raise InputError(f"detectors {others} need the inputs x, not only forward outputs")
    for i, det in enumerate(detectors):
        if not (det.shared or det.layered):
            assert x is not None
            scores[i] = det.score(clf, x, batch_size)
    return {keys[i]: scores[i] for i in range(len(detectors))}


def layer_taps(detectors: Sequence[Detector], model: ModelLike) -> dict[str, tuple[str, LayerReduce]]:
    """The union of the layer requests of the detectors fed from a pass with layers (need ``layers``)."""
    clf = as_classifier(model)
    taps: dict[str, tuple[str, LayerReduce]] = {}
    for det in detectors:
        if det.layered:
            taps.update(det.layer_taps(clf))
    return taps


def _has_layers(outputs: Outputs, taps: dict[str, tuple[str, LayerReduce]]) -> bool:
    return outputs.layers is not None and all(k in outputs.layers for k in taps)


def detector_keys(names: Sequence[str]) -> list[str]:
    """One key per detector name: the name, with ``-2``, ``-3``... appended where it repeats."""
    keys: list[str] = []
    for name in names:
        key, i = name, 2
        while key in keys:
            key, i = f"{name}-{i}", i + 1
        keys.append(key)
    return keys


# -- work that several detectors of one engine call have in common --------------------------------
_SHARED: ContextVar[dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] | None] = ContextVar(
    "mlsafety_ood_shared", default=None
)


@contextmanager
def sharing() -> Iterator[None]:
    """Within the block, :func:`reuse` computes each intermediate result once.

    :func:`fit_detectors` and :func:`score_detectors` open one around the shared detectors, so
    e.g. KNN and NNGuide share their similarity matrix and Mahalanobis and RMD their class
    Gaussians (not their distances: RMD whitens in float64). Nested blocks join the outer one.
    """
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared_memo() -> dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] | None:
    """The memo of the current :func:`sharing` block (None outside one), for work planned ahead
    (:func:`~mlsafety.monitoring.ood.search.bank_search`)."""
    return _SHARED.get()


def reuse(key: str, tensors: tuple[object, ...], compute: Callable[[], T], *params: Hashable) -> T:
    """``compute()``, done once per ``(key, tensors, params)`` inside a :func:`sharing` block.

    ``tensors`` are identified by object identity (the memo holds them, so an identity cannot be
    recycled within the block) and ``params`` by value. Outside a block it simply computes. The
    result is shared: callers must not modify it in place.
    """
    memo = _SHARED.get()
    if memo is None:
        return compute()
    k = (key, *(id(t) for t in tensors), *params)
    hit = memo.get(k)
    if hit is None:
        hit = (tensors, compute())
        memo[k] = hit
    return hit[1]  # type: ignore[no-any-return]


def float64(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64, converted once per engine call (several detectors score in float64)."""
    return x if x.dtype == torch.float64 else reuse("float64", (x,), x.double)
