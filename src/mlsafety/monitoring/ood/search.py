"""Selection kernels and the bank search that KNN-style detectors share.

:func:`kth_largest` and :func:`top_k_sum` reduce each row of a matrix; on the CPU they select in place
with NumPy's introselect over order-preserving integer views of the floats, in cache-sized blocks.
:func:`bank_search` runs such reductions over the cosine similarities of queries to a bank of
L2-normalised in-distribution features (:func:`unit_bank`) without materialising the similarity
matrix; inside one engine call (:func:`~mlsafety.monitoring.ood.engine.sharing`) every search planned
for the same queries and bank is done in one pass. :class:`BankDetector` is the base of the
detectors built on it (KNN, NNGuide).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from mlsafety.core import Classifier, InputError, Outputs, Param
from mlsafety.monitoring.ood.base import Detector, features_of
from mlsafety.monitoring.ood.engine import reuse, shared_memo

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
    memo = shared_memo()
    if memo is not None:
        _plan(memo, features, bank, columns).setdefault(search.key(), search)


def _plan(memo: dict[Any, Any], features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor) -> dict[Any, Search]:
    key = ("search-plan", id(features), id(bank), id(columns))
    entry = memo.setdefault(key, ((features, bank, columns), {}))
    return entry[1]  # type: ignore[no-any-return]


def bank_search(
    features: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor, search: Search, chunk: int = 1024
) -> torch.Tensor:
    """``search`` over the cosine similarities of ``features`` (N, D) to a :func:`unit_bank`, (N,).

    Inside a :func:`sharing` block, the first request computes every search announced with
    :func:`plan_search` for the same features and bank in one pass over the similarities (KNN and
    NNGuide share it), and later requests read their result.
    """
    memo = shared_memo()
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

    k = Param(50, int, low=1, doc="neighbours (capped at the bank size)")
    chunk = Param(1024, int, low=1, store=False, doc="query rows per block of similarities off the CPU")

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
