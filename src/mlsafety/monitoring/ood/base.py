"""Shared machinery of the OOD detectors: the base class, the registry and the shared-pass engine.

A detector turns inputs into anomaly scores (higher = more anomalous). It declares what it needs:

``logits``, ``features``
    computable from one forward pass (:class:`~mlsafety.core.Outputs`). Such detectors implement
    :meth:`Detector.fit_outputs` / :meth:`Detector.score_outputs`, so :func:`fit_detectors` and
    :func:`score_detectors` can feed every one of them from the same pass.
``grad``, ``input-grad``, ``multi-pass``
    need the model itself (gradients, input pre-processing, several stochastic passes); they
    override :meth:`Detector._fit_model` / :meth:`Detector._score_model` and run on their own.

Example:
    >>> det = DETECTORS.create("energy").fit(model, train_data)
    >>> scores = det.score(model, x)  # (N,), higher = more anomalous
    >>> many = [DETECTORS.create(n) for n in ("msp", "knn", "vim")]
    >>> fit_detectors(many, model, train_data)
    >>> score_detectors(many, model, x)  # {"msp": ..., "knn": ..., "vim": ...}, one forward pass
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple, TypeAlias, TypeVar

import numpy as np
import torch
from torch import nn

from mlsafety.core import (
    Classifier,
    DataLike,
    InputError,
    NotFittedError,
    Outputs,
    Registry,
    as_classifier,
    frozen,
    iter_batches,
)

FitData: TypeAlias = "DataLike"
"""In-distribution data, any form of :data:`mlsafety.core.DataLike`: an ArrayDataset, a torch Dataset
of ``(x, y)`` (or ``x``), a DataLoader of ``(x, y)`` or ``x`` batches, ``x`` or ``(x, y)``; labels are
optional (the model's predictions stand in)."""

SHARED_NEEDS = frozenset({"logits", "features"})
"""What one shared forward pass provides."""

KNOWN_NEEDS = frozenset({"logits", "features", "grad", "input-grad", "multi-pass"})

D = TypeVar("D", bound="Detector")
T = TypeVar("T")


class Detector:
    """Base class of OOD detectors: ``fit(model, data)`` on in-distribution data, ``score(model, x)``.

    Subclasses set ``needs`` and ``requires_fit``, store hyper-parameters in ``__init__`` and write
    either :meth:`_fit` / :meth:`_score` (from shared forward outputs) or :meth:`_fit_model` /
    :meth:`_score_model` (from the model). Learned state ends in ``_``. The base class wraps the
    model, checks inputs, computes the forward pass, restores the model and raises
    :class:`~mlsafety.core.NotFittedError` when a detector that learns state is used unfitted.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    requires_fit: ClassVar[bool] = False

    def __init__(self) -> None:
        self.fitted_ = False

    # -- public API ----------------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """True when one shared forward pass (logits, features) is all the detector needs."""
        return self.needs <= SHARED_NEEDS

    def fit(self: D, model: nn.Module | Classifier, data: FitData, batch_size: int = 256) -> D:
        """Learn what the detector needs from in-distribution ``data`` only; returns ``self``.

        Labels are used where the method needs classes (e.g. Mahalanobis' class means); where
        ``data`` has none (or ``-1``), the model's predictions stand in.
        """
        clf = as_classifier(model)
        if self.shared and type(self)._fit is Detector._fit:
            self.fitted_ = True  # stateless: no forward pass needed
        elif self.shared:
            outputs, labels = collect_outputs(clf, data, batch_size, features="features" in self.needs)
            self.fit_outputs(clf, outputs, labels)
        else:
            x, y = collect_inputs(data)
            self._fit_model(clf, x, y)
            self.fitted_ = True
        return self

    def score(self, model: nn.Module | Classifier, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Anomaly scores ``(N,)`` for inputs ``x`` (N, C, H, W) in [0, 1]; higher = more anomalous."""
        clf = as_classifier(model)
        self._check_fitted()
        if self.shared:
            outputs, _ = collect_outputs(clf, x, batch_size, features="features" in self.needs)
            return self.score_outputs(clf, outputs)
        return self._finish(self._score_model(clf, x, batch_size))

    def fit_outputs(self: D, model: nn.Module | Classifier, outputs: Outputs, labels: torch.Tensor | None = None) -> D:
        """Fit from forward outputs of in-distribution data (``labels`` (N,) optional); returns self."""
        self._check_shared()
        clf = as_classifier(model)
        self._check_outputs(outputs)
        labels = reuse("labels", (outputs, labels), lambda: _labels_or_pred(labels, outputs))
        self._fit(clf, outputs, labels)
        self.fitted_ = True
        return self

    def score_outputs(self, model: nn.Module | Classifier, outputs: Outputs) -> torch.Tensor:
        """Anomaly scores ``(N,)`` from forward outputs (no forward pass of its own)."""
        self._check_shared()
        self._check_fitted()
        self._check_outputs(outputs)
        return self._finish(self._score(as_classifier(model), outputs))

    def plan(self, outputs: Outputs) -> None:
        """Announce work this detector will ask of :func:`bank_search` when scoring ``outputs``, so
        that the engine can do it together with other detectors' (nothing by default)."""

    # -- to write ------------------------------------------------------------------------------
    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        """Learn state from in-distribution outputs (nothing by default)."""

    def _score(self, clf: Classifier, outputs: Outputs) -> torch.Tensor:
        raise NotImplementedError(f"detector {self.name!r} must implement _score or _score_model")

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Learn state with access to the model (nothing by default)."""

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        raise NotImplementedError(f"detector {self.name!r} must implement _score_model")

    # -- chores --------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.requires_fit and not getattr(self, "fitted_", False):
            raise NotFittedError(f"detector {self.name!r} is not fitted; call .fit(model, in_distribution_data) first")

    def _check_shared(self) -> None:
        if not self.shared:
            raise InputError(
                f"detector {self.name!r} needs {sorted(self.needs - SHARED_NEEDS)}, which a shared forward pass "
                "cannot give; call fit(model, data) / score(model, x) instead"
            )

    def _check_outputs(self, outputs: Outputs) -> None:
        if "features" in self.needs and outputs.features is None:
            raise InputError(
                f"detector {self.name!r} needs penultimate features; the model has no nn.Linear head "
                "(wrap it with mlsafety.core.Classifier(model, head='name'))"
            )

    @staticmethod
    def _finish(scores: torch.Tensor) -> torch.Tensor:
        return scores.detach().float().reshape(-1)

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({inner})"


DETECTORS: Registry[Detector] = Registry("detector")
register = DETECTORS.register


def create(name: str, **params: Any) -> Detector:
    """A detector by registry name with hyper-parameters ``params`` (paper defaults otherwise)."""
    return DETECTORS.create(name, **params)


def available() -> list[str]:
    """Registered detector names, sorted."""
    return DETECTORS.available()


# -- data plumbing -----------------------------------------------------------------------------
def _labels_or_pred(labels: torch.Tensor | None, outputs: Outputs) -> torch.Tensor:
    pred = outputs.logits.argmax(dim=1)
    if labels is None:
        return pred
    labels = labels.to(pred.device).long()
    if labels.shape != pred.shape:
        raise InputError(f"labels have shape {tuple(labels.shape)} but there are {pred.shape[0]} inputs")
    return torch.where(labels >= 0, labels, pred)


def _batches(data: FitData, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(x, y)`` batches of any data form (:func:`mlsafety.core.iter_batches`); ``y`` is None when unlabelled."""
    return iter_batches(data, batch_size, "data", labelled=False)


def collect_inputs(data: FitData) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All inputs (and labels when known) of ``data`` as two tensors."""
    xs, ys = [], []
    for xb, yb in _batches(data, 4096):
        xs.append(xb)
        ys.append(yb)
    if not xs:
        raise InputError("the data is empty: give at least one in-distribution input")
    y = None if any(yb is None for yb in ys) else torch.cat([yb for yb in ys if yb is not None])
    return torch.cat(xs), y


def collect_outputs(
    model: nn.Module | Classifier, data: FitData, batch_size: int = 256, features: bool = True
) -> tuple[Outputs, torch.Tensor | None]:
    """One forward pass over ``data`` in eval mode: logits and (optionally) features, plus labels."""
    clf = as_classifier(model)
    want = features and clf.head is not None
    logits, feats, labels = [], [], []
    have_labels = True
    device = clf.device
    with frozen(clf.module), torch.inference_mode():
        for xb, yb in _batches(data, batch_size):
            xb = xb.to(device)
            if want:
                fb, lb = clf.features_and_logits(xb)
                feats.append(fb)
            else:
                lb = clf.logits(xb)
            logits.append(lb)
            if yb is None:
                have_labels = False
            else:
                labels.append(yb.to(device))
    if not logits:
        raise InputError("the data is empty: give at least one input")
    out = Outputs(torch.cat(logits), torch.cat(feats) if want else None)
    return out, (torch.cat(labels) if have_labels and labels else None)


# -- the shared-pass engine ----------------------------------------------------------------------
def fit_detectors(
    detectors: Sequence[Detector],
    model: nn.Module | Classifier,
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
    if any(d.shared for d in detectors):
        if outputs is None:
            outputs, labels = collect_outputs(clf, data, batch_size)
        with sharing():
            for det in detectors:
                if det.shared:
                    det.fit_outputs(clf, outputs, labels)
    for det in detectors:
        if not det.shared:
            det.fit(clf, data, batch_size)
    return list(detectors)


def score_detectors(
    detectors: Sequence[Detector],
    model: nn.Module | Classifier,
    x: torch.Tensor | None = None,
    batch_size: int = 256,
    outputs: Outputs | None = None,
) -> dict[str, torch.Tensor]:
    """Anomaly scores of every detector for the same inputs, keyed by registry name, in the order given
    (a name that repeats gets ``-2``, ``-3``... appended).

    Detectors that need only logits and features are all fed from one forward pass (or from
    ``outputs`` when given); the others run on ``x`` on their own.
    """
    clf = as_classifier(model)
    keys: list[str] = []
    for det in detectors:
        keys.append(_key(det, keys))
    scores: dict[int, torch.Tensor] = {}
    if any(d.shared for d in detectors):
        if outputs is None:
            if x is None:
                raise InputError("give inputs x or forward outputs")
            outputs, _ = collect_outputs(clf, x, batch_size)
        with sharing():
            for det in detectors:
                if det.shared and getattr(det, "fitted_", False):
                    det.plan(outputs)
            for i, det in enumerate(detectors):
                if det.shared:
                    scores[i] = det.score_outputs(clf, outputs)
    others = [d.name for d in detectors if not d.shared]
    if others and x is None:
        raise InputError(f"detectors {others} need the inputs x, not only forward outputs")
    for i, det in enumerate(detectors):
        if not det.shared:
            assert x is not None
            scores[i] = det.score(clf, x, batch_size)
    return {keys[i]: scores[i] for i in range(len(detectors))}


def _key(det: Detector, taken: Sequence[str] | Mapping[str, Any]) -> str:
    key, i = det.name, 2
    while key in taken:
        key, i = f"{det.name}-{i}", i + 1
    return key


# -- small helpers the detectors share -------------------------------------------------------------
def head_of(clf: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight ``(K, D)`` and bias ``(K,)``, detached."""
    return clf.head_weight, clf.head_bias


def energy_of(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T logsumexp(logits / T)`` (N,); higher = more anomalous."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def features_of(outputs: Outputs) -> torch.Tensor:
    if outputs.features is None:
        raise InputError("this detector needs penultimate features; the model has no nn.Linear head")
    return outputs.features


# -- work that several detectors of one engine call have in common --------------------------------
_SHARED: ContextVar[dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] | None] = ContextVar(
    "mlsafety_ood_shared", default=None
)


@contextmanager
def sharing() -> Iterator[None]:
    """Within the block, :func:`reuse` computes each intermediate result once.

    :func:`fit_detectors` and :func:`score_detectors` open one around the shared detectors, so
    e.g. KNN and NNGuide share their similarity matrix and Mahalanobis and RMD their class
    Gaussians and distances. Nested blocks join the outer one.
    """
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


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


_INT_VIEWS: dict[np.dtype[Any], tuple[type[np.signedinteger[Any]], int, int]] = {
    np.dtype(np.float32): (np.int32, 31, 2**31 - 1),
    np.dtype(np.float64): (np.int64, 63, 2**63 - 1),
}


def _select(block: np.ndarray, k: int, kind: str, non_negative: bool = False) -> np.ndarray:
    """Each row's ``k``-th largest value (``kind="kth"``) or the sum of its ``k`` largest
    (``"top-sum"``) of a float block (rows, M), whose contents this destroys.

    The floats are selected as order-preserving integers: their bit patterns, with the magnitude
    bits of negative ones flipped (a no-op where the block has no negative value, as for cosines
    of ReLU features; ``non_negative`` says so without looking). NumPy's introselect partitions
    integers about a third faster than floats.
    """
    m = block.shape[1]
    ints, shift, magnitude = _INT_VIEWS[block.dtype]
    keys = block.view(ints)
    signed = not (non_negative or bool(block.min() >= 0))  # NaN also takes the general path
    if signed:
        keys ^= (keys >> shift) & magnitude
    keys.partition(m - k, axis=1)
    if signed:  # back to float bit patterns, only where the answer lies
        top = keys[:, m - k :]
        top ^= (top >> shift) & magnitude
    return block[:, m - k].copy() if kind == "kth" else block[:, m - k :].sum(axis=1)


def _copied_blocks(x: torch.Tensor) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks of ``x`` copied into a reused, cache-sized buffer that :func:`_select` may
    destroy: ``(first row, block)``. ``x`` itself is never modified."""
    a = x.detach().numpy()
    n, m = a.shape
    rows = max(1, _BLOCK_FLOATS // m)
    buf = np.empty((min(rows, n), m), dtype=a.dtype)
    for start in range(0, n, rows):
        block = buf[: min(rows, n - start)]
        np.copyto(block, a[start : start + rows])
        yield start, block


def _on_cpu(x: torch.Tensor) -> bool:
    """True where the NumPy selection applies: CPU floats that no gradient has to flow through
    (a monitor-aware attack differentiates detector scores; ``topk`` keeps that working)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def _check_k(x: torch.Tensor, k: int) -> None:
    if x.ndim != 2 or not 1 <= k <= x.shape[1]:
        raise InputError(f"k must lie in [1, {x.shape[-1]}] for a matrix (N, M), got k={k}, shape {tuple(x.shape)}")


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's ``k``-th largest value ``(N,)`` (``k`` from 1) of a matrix ``(N, M)``."""
    _check_k(x, k)
    if not _on_cpu(x):
        return x.topk(k, dim=1).values[:, -1]
    out = np.empty(x.shape[0], dtype=x.detach().numpy().dtype)
    for start, block in _copied_blocks(x):
        out[start : start + block.shape[0]] = _select(block, k, "kth")
    return torch.from_numpy(out)


def top_k_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """The sum of each row's ``k`` largest values ``(N,)`` of a matrix ``(N, M)``."""
    _check_k(x, k)
    if not _on_cpu(x):
        return x.topk(k, dim=1).values.sum(dim=1)
    out = np.empty(x.shape[0], dtype=x.detach().numpy().dtype)
    for start, block in _copied_blocks(x):
        out[start : start + block.shape[0]] = _select(block, k, "top-sum")
    return torch.from_numpy(out)


def unit_bank(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bank for cosine search: L2-normalised rows, and the columns where any row is non-zero.

    Returns ``(bank (M, D'), columns (D',))``: the normalised features restricted to ``columns``.
    Dropping the columns that are zero in every bank row (dead ReLUs) leaves every inner product
    with the bank unchanged and makes the search cheaper.
    """
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    columns = (unit != 0).any(dim=0).nonzero().reshape(-1)
    if columns.numel() == 0:  # an all-zero bank: keep one column so shapes stay valid
        columns = torch.zeros(1, dtype=torch.long, device=unit.device)
    # stored column-major: the search multiplies by its transpose, which is then contiguous
    return unit[:, columns].T.contiguous().T, columns


_BLOCK_FLOATS = 1 << 18
"""Similarities per block of a CPU bank search (1 MB: the block and its work copy stay in cache)."""


class Search(NamedTuple):
    """A reduction of each query's cosine similarities to a bank: the ``k``-th largest (``"kth"``)
    or the sum of the ``k`` largest (``"top-sum"``), of the similarities times a per-bank-row
    ``scale`` (M,) when given."""

    kind: str
    k: int
    scale: torch.Tensor | None = None

    def key(self) -> tuple[str, int, int | None]:
        return self.kind, self.k, None if self.scale is None else id(self.scale)


def plan_search(features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor, search: Search) -> None:
    """Announce that :func:`bank_search` will be asked for ``search`` inside the current
    :func:`sharing` block, so that the first request computes every announced one in one pass."""
    memo = _SHARED.get()
    if memo is not None:
        _plan(memo, features, bank, columns).setdefault(search.key(), search)


def _plan(memo: dict[Any, Any], features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor) -> dict[Any, Search]:
    key = ("search-plan", id(features), id(bank), id(columns))
    entry = memo.setdefault(key, ((features, bank, columns), {}))
    return entry[1]  # type: ignore[no-any-return]


class BankDetector(Detector):
    """Base of detectors that search a bank of L2-normalised in-distribution features (KNN,
    NNGuide): it fits the bank (:func:`unit_bank`, shared within an engine call), announces its
    :class:`Search` to the engine and runs it with :func:`bank_search`.

    Args:
        k: neighbours (capped at the bank size).
        chunk: query rows per block of similarities off the CPU (memory ``chunk x N_fit`` floats;
            on the CPU blocks are sized to stay in cache).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    requires_fit = True

    def __init__(self, k: int, chunk: int = 1024) -> None:
        if k < 1:
            raise InputError(f"{self.name} needs k >= 1, got {k}")
        self.k = k
        self.chunk = chunk

    def _fit(self, clf: Classifier, outputs: Outputs, labels: torch.Tensor) -> None:
        f = features_of(outputs)
        self.bank_, self.columns_ = reuse("unit-bank", (f,), lambda: unit_bank(f))

    def _search(self) -> Search:
        """The reduction of each query's similarities to the bank this detector needs."""
        raise NotImplementedError

    def plan(self, outputs: Outputs) -> None:
        plan_search(features_of(outputs), self.bank_, self.columns_, self._search())

    def _searched(self, outputs: Outputs) -> torch.Tensor:
        """This detector's search over the queries of ``outputs`` ``(N,)``."""
        return bank_search(features_of(outputs), self.bank_, self.columns_, self._search(), self.chunk)


def bank_search(
    features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor, search: Search, chunk: int = 1024
) -> torch.Tensor:
    """``search`` over the cosine similarities of ``features`` (N, D) to a :func:`unit_bank`, (N,).

    Inside a :func:`sharing` block, the first request computes every search announced with
    :func:`plan_search` for the same features and bank in one pass over the similarities (KNN and
    NNGuide share it), and later requests read their result.
    """
    memo = _SHARED.get()
    if memo is None:
        return _fused_search(features, bank, columns, [search], chunk)[0]
    base_key = ("bank-search", id(features), id(bank), id(columns))
    hit = memo.get((*base_key, *search.key()))
    if hit is not None:
        return hit[1]  # type: ignore[no-any-return]
    plan = _plan(memo, features, bank, columns)
    plan.setdefault(search.key(), search)
    todo = list(plan.values())
    plan.clear()
    for done, result in zip(todo, _fused_search(features, bank, columns, todo, chunk), strict=True):
        memo[(*base_key, *done.key())] = ((features, bank, columns, done.scale), result)
    return memo[(*base_key, *search.key())][1]  # type: ignore[no-any-return]


def _fused_search(
    features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor, searches: Sequence[Search], chunk: int
) -> list[torch.Tensor]:
    """Every search over row blocks of the similarity matrix, never materialising all of it.

    On the CPU a block is sized to stay in cache, written by the matrix product into a reused
    buffer and selected in place by NumPy's introselect (a copy per search but the last): the
    similarities never go to memory. Elsewhere each block of ``chunk`` rows goes through ``topk``.
    """
    n, m = features.shape[0], bank.shape[0]
    for search in searches:
        if search.kind not in ("kth", "top-sum") or not 1 <= search.k <= m:
            raise InputError(f"bad bank search {search.kind!r} with k={search.k} over a bank of {m} rows")
    bank_t = bank.T.contiguous()
    if not (_on_cpu(features) and bank.device.type == "cpu" and bank.dtype == torch.float32):
        outs: list[list[torch.Tensor]] = [[] for _ in searches]
        for start in range(0, n, chunk):
            sims = torch.nn.functional.normalize(features[start : start + chunk].float(), dim=1)[:, columns] @ bank_t
            for out, search in zip(outs, searches, strict=True):
                top = (sims if search.scale is None else sims * search.scale).topk(search.k, dim=1).values
                out.append(top[:, -1] if search.kind == "kth" else top.sum(dim=1))
        return [torch.cat(out) if out else sims.new_zeros(0) for out in outs]
    rows = max(1, min(chunk, _BLOCK_FLOATS // m))
    sims_buf = torch.empty(min(rows, n), m)
    work = np.empty((min(rows, n), m), dtype=np.float32)
    scales = [None if s.scale is None else s.scale.detach().float().cpu().numpy() for s in searches]
    results = [np.empty(n, dtype=np.float32) for _ in searches]
    plain = [i for i, s in enumerate(searches) if s.scale is None]
    in_place = plain[-1] if plain else -1  # selected in the product's own buffer, after all others
    order = [i for i in range(len(searches)) if i != in_place] + ([in_place] if plain else [])
    # a positive scale of a row keeps its order: select on raw inner products, divide by the norms after
    raw = features.detach().float()
    norms = torch.linalg.vector_norm(raw, dim=1).clamp_min_(1e-12).numpy()  # as F.normalize's eps
    queries = raw[:, columns]
    # cosines of non-negative (e.g. ReLU) features are non-negative, and so are positive multiples
    signs = bool(queries.min() >= 0) and bool(bank.min() >= 0)
    non_negative = [signs and (sc is None or bool(sc.min() >= 0)) for sc in scales]
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = sims_buf[: stop - start]
        torch.mm(queries[start:stop], bank_t, out=block)
        values = block.numpy()
        for i in order:
            search, scale, k = searches[i], scales[i], searches[i].k
            part = values if i == in_place else work[: stop - start]
            if scale is not None:
                np.multiply(values, scale, out=part)
            elif i != in_place:
                np.copyto(part, values)
            results[i][start:stop] = _select(part, k, search.kind, non_negative[i])
    return [torch.from_numpy(r / norms) for r in results]
