"""Input checks and row blocks shared by the calibration metrics (private)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mlsafety.core import InputError

BLOCK_ELEMENTS = 1 << 20
"""Rows x classes read at once (8 MB of float64)."""


def check_labels(labels: torch.Tensor, n: int, k: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise InputError("labels must be whole class indices, not fractions")
    labels = labels.long()
    if labels.shape != (n,):
        raise InputError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(f"labels must lie in [0, {k})")
    return labels


def check_shape(probs: torch.Tensor) -> None:
    if probs.ndim != 2:
        raise InputError(f"probabilities must have shape (N, K), got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise InputError("calibration metrics need at least one prediction")


def check_probs(p: torch.Tensor) -> None:
    if not torch.isfinite(p).all() or float(p.min()) < 0 or float(p.max()) > 1 + 1e-6:
        raise InputError("probabilities must be finite and in [0, 1]; pass softmax(logits), not logits")


def check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated probabilities (as given, not copied) and labels (long, on the probabilities' device)."""
    check_shape(probs)
    labels = check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    check_probs(probs)
    return probs.detach(), labels


def check_n_bins(n_bins: int) -> None:
    """Refuse a bin count below 1 (one :class:`InputError` line)."""
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")


def row_blocks(n: int, k: int) -> Iterator[slice]:
    """Slices of rows holding at most :data:`BLOCK_ELEMENTS` entries of an (n, k) array."""
    rows = max(1, BLOCK_ELEMENTS // max(1, k))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))
