"""Measure detectors on OOD sets: fit once on in-distribution data, score every input set from shared
passes, and compute the detection metrics with intervals.

:class:`ScoreCache` is the one place scores of many detectors are kept: detectors are fitted once
(lazily, on first use), each input set is scored once for all of them by the shared-pass engine, and
the scores are cached by the set's key. :func:`evaluate` measures them against each OOD set with
:func:`~mlsafety.metrics.ood_metrics`; :func:`~mlsafety.metrics.roc_points` gives their ROC curves.

Example:
    >>> cache = ScoreCache(model, train_data, ["msp", "knn"], inputs={"test": x_test, "letters": x_ood})
    >>> s = cache.scores("test"), cache.scores("letters")          # {"msp": (N,), "knn": (N,)} each
    >>> ood_metrics(s[0]["knn"], s[1]["knn"], n_boot=500, seed=0)   # AUROC, AUPR, FPR@95, intervals
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mlsafety.core import Hazard, InputError, ModelLike, Outputs, as_classifier, derive_seed, modality_of
from mlsafety.metrics import Estimate, ood_metrics
from mlsafety.monitoring.ood.base import DETECTORS, IMAGE, TEXT, Detector
from mlsafety.monitoring.ood.engine import FitData, detector_keys, fit_detectors, score_detectors

InputSource = Mapping[str, torch.Tensor] | Callable[[str], tuple[torch.Tensor, Outputs | None]]
"""Where :meth:`ScoreCache.scores` finds an input set by key: a mapping of inputs, or a function of the
key giving the inputs and, when already computed, their forward outputs (None: the cache makes the pass)."""


class ScoreCache:
    """Detectors fitted once on in-distribution data; their scores of each input set computed once.

    The detectors are created and fitted on first use (:attr:`detectors`), every one that needs only
    logits and features from one forward pass; each input set is scored by all of them in one engine
    call (:func:`~mlsafety.monitoring.ood.score_detectors`) and kept on the CPU by key.

    A detector must work on the model's modality (:func:`modalities`: a text classifier takes the
    detectors tagged :data:`~mlsafety.monitoring.ood.TEXT`, those fed by the shared pass); another is
    refused with one line.

    Args:
        model: the classifier.
        fit_data: in-distribution data the detectors are fitted on (never an OOD set).
        detectors: registry names (created with ``params``, else paper defaults) or detector instances
            (fitted here); a name that repeats is keyed ``name-2``, ``name-3``...
        params: hyper-parameters by registry name.
        inputs: where :meth:`scores` finds an input set by key (see :data:`InputSource`).
        batch_size: inputs per forward pass.
        fit_outputs: forward outputs of ``fit_data`` when already computed, or a function giving them
            (called when the detectors are fitted).
        fit_labels: labels of ``fit_outputs`` (None: the model's predictions stand in).
        held_out: in-distribution data held out from ``fit_data`` (e.g. validation data when ``fit_data`` is
            the training data): the detectors whose method fits them on held-out data
            (:attr:`~mlsafety.monitoring.ood.Detector.fit_held_out`, e.g. ``temperature-msp``) are fitted on
            it, and :attr:`info` says so (``fitted_on``); None: every detector on ``fit_data``.
        held_out_outputs: forward outputs of ``held_out`` when already computed, or a function giving them.
        held_out_labels: labels of ``held_out_outputs`` (None: the model's predictions stand in).
    """

    def __init__(
        self,
        model: ModelLike,
        fit_data: FitData,
        detectors: Sequence[str | Detector],
        params: Mapping[str, Mapping[str, Any]] | None = None,
        inputs: InputSource | None = None,
        batch_size: int = 256,
        fit_outputs: Outputs | Callable[[], Outputs] | None = None,
        fit_labels: torch.Tensor | None = None,
        held_out: FitData | None = None,
        held_out_outputs: Outputs | Callable[[], Outputs] | None = None,
        held_out_labels: torch.Tensor | None = None,
    ) -> None:
        self.model = as_classifier(model)
        self.fit_data = fit_data
        self.held_out = held_out
        self._held_out_outputs = held_out_outputs
        self._held_out_labels = held_out_labels
        self._specs = list(detectors)
        modality = modality_of(self.model)
        for d in self._specs:
            name = d if isinstance(d, str) else d.name
            if modality not in modalities(name):  # an unknown name fails here, with a suggestion
                able = DETECTORS.tagged(modality)
                raise InputError(
                    f"detector {name!r} does not work on {modality} models ({needs_phrase(name)}); "
                    f"use one of: {', '.join(able)}"
                )
        self.names = detector_keys([d if isinstance(d, str) else d.name for d in self._specs])
        """The detectors' keys, in the order given."""
        self.params = {k: dict((params or {}).get(k, {})) for k in self.names}
        self.inputs = inputs
        self.batch_size = batch_size
        self._fit_outputs = fit_outputs
        self._fit_labels = fit_labels
        self._detectors: list[Detector] | None = None
        self._scores: dict[str, dict[str, torch.Tensor]] = {}
        self.info: dict[str, dict[str, Any]] = {n: {} for n in self.names}
        """What produced each detector's numbers: its stored hyper-parameters, plus what
        :meth:`replace` adds (e.g. how it was tuned)."""
        self.prepare: Callable[[], None] | None = None
        """Runs once before the first scores are computed (e.g. tuning with :meth:`replace`)."""

    @property
    def detectors(self) -> list[Detector]:
        """The fitted detectors, in the order of :attr:`names` (fitted on first use)."""
        if self._detectors is None:
            dets = [
                DETECTORS.create(spec, **self.params[key]) if isinstance(spec, str) else spec
                for key, spec in zip(self.names, self._specs, strict=True)
            ]
            held = [d for d in dets if self.fits_held_out(d)]
            main = [d for d in dets if not self.fits_held_out(d)]
            if main:
                outputs = self._fit_outputs() if callable(self._fit_outputs) else self._fit_outputs
                fit_detectors(
                    main, self.model, self.fit_data, self.batch_size, outputs=outputs, labels=self._fit_labels
                )
            if held:
                self.fit_on_held_out(held)
            self._detectors = dets
            for key, det in zip(self.names, dets, strict=True):
                self.info[key] = {**det.stored_params(), **self._fitted_on(det), **self.info[key]}
        return self._detectors

    def fits_held_out(self, detector: Detector) -> bool:
        """True when ``detector`` is fitted on :attr:`held_out` (it asks for held-out data, and there is some)."""
        return self.held_out is not None and detector.fit_held_out

    def fit_on_held_out(self, detectors: Sequence[Detector]) -> None:
        """Fit ``detectors`` (in place) on :attr:`held_out`."""
        assert self.held_out is not None
        outputs = self._held_out_outputs() if callable(self._held_out_outputs) else self._held_out_outputs
        fit_detectors(detectors, self.model, self.held_out, self.batch_size, outputs=outputs,
                      labels=self._held_out_labels)  # fmt: skip

    def _fitted_on(self, detector: Detector) -> dict[str, str]:
        return {"fitted_on": "held-out data"} if self.fits_held_out(detector) else {}

    def replace(self, name: str, detector: Detector, **info: Any) -> None:
        """Use an already fitted ``detector`` for key ``name`` (e.g. a tuned one); ``info`` goes with
        its stored hyper-parameters into :attr:`info`. Scores already computed are dropped."""
        dets = self.detectors
        dets[self.names.index(name)] = detector
        self.info[name] = {**detector.stored_params(), **info}
        self._scores.clear()

    def scores(
        self, key: str, x: torch.Tensor | None = None, outputs: Outputs | None = None
    ) -> dict[str, torch.Tensor]:
        """Anomaly scores ``(N,)`` of every detector for the input set ``key``, by detector key (CPU).

        Computed once per key, from ``x`` (and its forward ``outputs``) when given, else from the
        cache's :data:`InputSource`.
        """
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            prepare()
        if key not in self._scores:
            if x is None:
                x, outputs = self._source(key)
            out = score_detectors(self.detectors, self.model, x, self.batch_size, outputs=outputs)
            self._scores[key] = {n: s.cpu() for n, s in zip(self.names, out.values(), strict=True)}
        return self._scores[key]

    def _source(self, key: str) -> tuple[torch.Tensor, Outputs | None]:
        if self.inputs is None:
            raise InputError(f"no inputs for {key!r}: give x, or inputs= when making the ScoreCache")
        if callable(self.inputs):
            return self.inputs(key)
        if key not in self.inputs:
            raise InputError(f"no input set {key!r}; this cache has: {', '.join(self.inputs) or 'none'}")
        return self.inputs[key], None


def modalities(name: str) -> frozenset[str]:
    """The modalities detector ``name`` works on: its :data:`IMAGE` / :data:`TEXT` tags (a detector
    registered with neither, e.g. a user's own, is taken as image-only)."""
    tags = DETECTORS.tags(name) & {IMAGE, TEXT}
    return tags or frozenset({IMAGE})


def needs_phrase(name: str) -> str:
    """What detector ``name`` needs that another modality lacks (``image-only: needs pixel inputs``)."""
    tags = modalities(name)
    if TEXT not in tags:
        return "image-only: needs pixel inputs"
    if IMAGE not in tags:
        return "text-only: needs text inputs"
    return "works on image and text models"


def evaluate(
    detectors: Sequence[str | Detector],
    model: ModelLike,
    fit_data: FitData,
    in_x: torch.Tensor,
    ood_sets: Mapping[str, torch.Tensor],
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, dict[str, Estimate]]]:
    """Fit detectors on in-distribution ``fit_data`` and measure them on each OOD set.

    One forward pass per data set feeds every detector that needs only logits and features.

    Args:
        detectors: registry names (paper defaults) or detector instances (fitted here).
        model: the classifier.
        fit_data: in-distribution data to fit on (never the OOD sets).
        in_x: held-out in-distribution inputs (the negatives).
        ood_sets: OOD inputs by set name (the positives).
        n_boot: bootstrap resamples per interval.
        seed: seed of the bootstrap (derived per set and detector).
        batch_size: inputs per forward pass.

    Returns:
        ``result[set][detector][metric]`` with metrics ``auroc``, ``aupr_in``, ``aupr_out``,
        ``fpr95_id_positive`` (in-distribution positive: ODIN, OpenOOD v1.0) and
        ``fpr95_ood_positive`` (OOD positive: OpenOOD v1.5, pytorch-ood), each an
        :class:`~mlsafety.metrics.Estimate` with a 95% interval.
    """
    cache = ScoreCache(model, fit_data, detectors, batch_size=batch_size)
    in_scores = cache.scores("in-distribution", in_x)
    result: dict[str, dict[str, dict[str, Estimate]]] = {}
    for set_name, x in ood_sets.items():
        out_scores = cache.scores(str(Hazard.ood(set_name)), x)
        result[set_name] = {
            name: ood_metrics(in_scores[name], out_scores[name], n_boot, derive_seed(seed, set_name, name))
            for name in in_scores
        }
    return result
