"""What every hidden-state probe shares: per-side normalisation, the fit/score protocol, the registry.

Burns et al. (2022, "Discovering Latent Knowledge in Language Models Without Supervision") normalise
the hidden states of each side of the contrast pairs on its own before probing: ``x+`` states and
``x-`` states are mean-centred separately (which removes the direction that merely encodes "the text
ends in Yes") and divided by their standard deviation, coordinate by coordinate, over the items of the
set. Every probe here does that to the set it is given, at fit time and at score time (so a probe
applied to another dataset, or behind a misleading prefix, normalises with that set's own statistics,
which needs no labels).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mlsafety.core import HyperParams, InputError, Registry, check_is_fitted

PROBES: Registry[Probe] = Registry("probe")
"""The probe registry: ``PROBES.create("ccs")``; tags ``supervised`` / ``unsupervised``."""

register = PROBES.register


def normalize(states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """One side's states ``(N, D)`` mean-centred and scaled to unit standard deviation per coordinate."""
    centred = states - states.mean(0, keepdim=True)
    return centred / centred.std(0, keepdim=True).clamp_min(eps)


def _check_states(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.ndim != 2 or pos.shape != neg.shape:
        raise InputError(
            f"probes take x+ and x- states of one shape (N, D), got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if pos.shape[0] < 2:
        raise InputError(f"probes need at least 2 contrast pairs to normalise each side, got {pos.shape[0]}")
    if not bool(torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise InputError("hidden states hold NaN or infinite values; check the model's numerics")


class Probe(HyperParams):
    """A linear reading of the truth from contrast-pair hidden states.

    Subclasses write :meth:`_fit` and :meth:`_score` on normalised states; a score above 0 reads
    "``x+`` is true" (the affirmative answer is right). An unsupervised probe's direction has no sign of
    its own; :meth:`fit` fixes it without labels from ``reference`` (a label-free score per item, e.g.
    the zero-shot log-probability difference: the sign that agrees with it on most items is kept) and
    keeps the learned sign when none is given.
    """

    supervised: ClassVar[bool] = False
    name: ClassVar[str]

    def fit(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        labels: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Probe:
        """Learn from ``pos`` / ``neg`` states ``(N, D)`` (labels ``(N,)`` 0/1 for supervised probes)."""
        _check_states(pos, neg)
        if self.supervised:
            if labels is None:
                raise InputError(f"probe {self.name!r} is supervised: pass labels (1 when x+ is true)")
            n_pos = int(labels.sum())
            if labels.shape != pos.shape[:1] or n_pos in (0, len(labels)):
                raise InputError(f"probe {self.name!r} needs labels (N,) with both classes present")
        p, n = normalize(pos.float()), normalize(neg.float())
        self.sign_ = 1.0
        self._fit(p, n, labels.long() if labels is not None else None, generator)
        if not self.supervised and reference is not None:
            agree = ((self._score(p, n) > 0) == (reference > 0)).float().mean()
            self.sign_ = 1.0 if float(agree) >= 0.5 else -1.0
        return self

    def score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N,)`` scores, above 0 where the probe reads ``x+`` as true; each side normalised on this set."""
        check_is_fitted(self, ["sign_"])
        _check_states(pos, neg)
        return self.sign_ * self._score(normalize(pos.float()), normalize(neg.float()))

    def predict(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64: 1 where the probe reads ``x+`` as true."""
        return (self.score(pos, neg) > 0).long()

    def _fit(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        raise NotImplementedError

    def _score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
