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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch

from mlsafety.core import HyperParams, InputError, Registry, check_is_fitted

PROBES: Registry[Probe] = Registry("probe")
"""The probe registry: ``PROBES.create("ccs")``; tags ``supervised`` / ``unsupervised``."""

register = PROBES.register


def normalize(states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """One side's states ``(N, ...)`` mean-centred and scaled to unit standard deviation (N - 1 in the
    denominator) per coordinate, over the first dimension."""
    centred = states - states.mean(0, keepdim=True)
    # the two-pass sum of squares: torch's std along the first dimension of (N, L, D) states took 2.7x as long
    std = centred.square().sum(0, keepdim=True).div_(max(len(states) - 1, 1)).sqrt_()
    return centred.div_(std.clamp_min_(eps))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread with denormal floats flushed to zero, then restore the thread
    count (and the default, no flushing). Probe fitting is many small operations: with two threads on a
    contended CPU every one of them waited on the slower thread (CCS on smollm2-135m's 31 layers: 7.1 s per
    200 steps on 2 threads, 0.84 s on 1, at load 4 on 2 cores), and a converged CCS's squared gradients in
    AdamW are denormal, which the CPU computes slowly (4.6 s against 2.6 s for 1000 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushing:
            torch.set_flush_denormal(False)


def _check_states(pos: torch.Tensor, neg: torch.Tensor, ndim: int = 2) -> None:
    shape = "(N, D)" if ndim == 2 else "(N, L, D)"
    if pos.ndim != ndim or pos.shape != neg.shape:
        raise InputError(
            f"probes take x+ and x- states of one shape {shape}, got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if pos.shape[0] < 2:
        raise InputError(f"probes need at least 2 contrast pairs to normalise each side, got {pos.shape[0]}")
    if not bool(torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise InputError("hidden states hold NaN or infinite values; check the model's numerics")


def _check_reference(reference: torch.Tensor, n: int) -> None:
    if reference.shape != (n,):
        raise InputError(f"reference must hold one score per contrast pair ({n},), got {tuple(reference.shape)}")
    if not bool(torch.isfinite(reference).all()):
        raise InputError("the reference scores hold NaN or infinite values; check the model's log-probabilities")


def _signs_from(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(L,)`` signs: +1 where layer ``l``'s readings ``(L, N)`` agree on at least half the items with the
    reference read against its median (items at the median count for neither side), else -1.

    The median, not 0, is the reference's threshold: the raw zero-shot difference of a small model is often
    of one sign on every item (it prefers one answer word), and "agree with it" then only asks the probe to
    say that word on most items, which picks the wrong sign whenever most items have the other label.
    """
    ref = reference.detach().double().cpu()
    side = torch.sign(ref - ref.quantile(0.5))
    reading = torch.where(scores.detach().cpu() > 0, 1.0, -1.0).double()
    return torch.where((reading * side[None, :]).sum(1) >= 0, 1.0, -1.0).float()


def _by_layer(states: torch.Tensor) -> torch.Tensor:
    """``(N, L, D)`` states normalised per side and layer, laid out ``(L, N, D)`` for batched algebra."""
    return normalize(states.float()).transpose(0, 1).contiguous()


def linear_scores(pos: torch.Tensor, neg: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
    """``(L, N)`` readings ``(x+ - x-) . w_l + b_l`` of ``(L, N, D)`` states under per-layer ``(L, D)`` / ``(L,)``."""
    return torch.baddbmm(intercept[:, None, None], pos - neg, coef[:, :, None])[:, :, 0]


class Probe(HyperParams):
    """A linear reading of the truth from contrast-pair hidden states.

    Subclasses write :meth:`_fit_layers` and :meth:`_score_layers` on normalised states laid out
    ``(L, N, D)``: every probed layer is fitted at once as a batch of independent problems (one batched
    optimisation or factorisation instead of a loop over layers). A score above 0 reads "``x+`` is true"
    (the affirmative answer is right). An unsupervised probe's direction has no sign of its own; the fit
    fixes it without labels from ``reference`` (a label-free score per item, e.g. the zero-shot
    log-probability difference: per layer, the sign whose readings agree with the reference's ranking on
    most items is kept, the reference read against its median, so that a constant offset, such as a model
    that answers "yes" to every item, cannot decide the sign) and keeps the learned sign when none is given.

    :meth:`fit` / :meth:`score` take one layer ``(N, D)`` (attributes ``coef_ (D,)``, ``intercept_``,
    ``sign_``); :meth:`fit_layers` / :meth:`score_layers` take ``(N, L, D)`` (attributes ``coefs_ (L, D)``,
    ``intercepts_ (L,)``, ``signs_ (L,)``). Fitting L layers together gives each layer the result it gets
    alone (same initialisation), up to floating-point summation order.
    """

    supervised: ClassVar[bool] = False
    fits_its_items: ClassVar[bool] = False
    """True for a probe that separates its own training items (so its layer is chosen by cross-validation)."""
    name: ClassVar[str]
    coefs_: torch.Tensor
    intercepts_: torch.Tensor
    signs_: torch.Tensor

    def fit(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        labels: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Probe:
        """Learn from one layer's ``pos`` / ``neg`` states ``(N, D)`` (labels ``(N,)`` 0/1 for supervised probes)."""
        _check_states(pos, neg)
        self.fit_layers(pos[:, None], neg[:, None], labels, reference, generator)
        self.coef_ = self.coefs_[0]
        self.intercept_ = float(self.intercepts_[0])
        self.sign_ = float(self.signs_[0])
        return self

    def fit_layers(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        labels: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Probe:
        """Learn one probe per layer from ``(N, L, D)`` states, all layers in one batched fit."""
        _check_states(pos, neg, ndim=3)
        if self.supervised:
            if labels is None:
                raise InputError(f"probe {self.name!r} is supervised: pass labels (1 when x+ is true)")
            n_pos = int(labels.sum())
            if labels.shape != pos.shape[:1] or n_pos in (0, len(labels)):
                raise InputError(f"probe {self.name!r} needs labels (N,) with both classes present")
        if reference is not None and not self.supervised:
            _check_reference(reference, len(pos))
        p, n = _by_layer(pos), _by_layer(neg)
        with one_thread():
            self._fit_layers(p, n, labels.long() if labels is not None else None, generator)
        signs = torch.ones(p.shape[0])
        if not self.supervised and reference is not None:
            signs = _signs_from(self._score_layers(p, n), reference)
        self.signs_ = signs
        return self

    def score(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N,)`` scores, above 0 where the probe reads ``x+`` as true; each side normalised on this set."""
        check_is_fitted(self, ["signs_"])
        _check_states(pos, neg)
        if len(self.signs_) != 1:
            raise InputError(f"this probe was fitted on {len(self.signs_)} layers: use score_layers with (N, L, D)")
        return self.score_layers(pos[:, None], neg[:, None])[:, 0]

    def score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` scores of ``(N, L, D)`` states, layer ``l`` read by the probe fitted on layer ``l``."""
        check_is_fitted(self, ["signs_"])
        _check_states(pos, neg, ndim=3)
        if pos.shape[1] != len(self.signs_):
            raise InputError(f"this probe was fitted on {len(self.signs_)} layers, got states of {pos.shape[1]}")
        return (self.signs_[:, None] * self._score_layers(_by_layer(pos), _by_layer(neg))).T

    def predict(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64: 1 where the probe reads ``x+`` as true."""
        return (self.score(pos, neg) > 0).long()

    def predict_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` int64: 1 where layer ``l``'s probe reads ``x+`` as true."""
        return (self.score_layers(pos, neg) > 0).long()

    def _fit_layers(
        self, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None
    ) -> None:
        """Set ``coefs_ (L, D)`` and ``intercepts_ (L,)`` from normalised ``(L, N, D)`` states."""
        raise NotImplementedError

    def _score_layers(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``(L, N)`` readings of normalised ``(L, N, D)`` states (before the sign)."""
        raise NotImplementedError
