"""The context a check runs in: model, data, hazards, shared forward outputs, generators."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    Hazard,
    LanguageModel,
    Outputs,
    Progress,
    UnknownNameError,
    derive_seed,
    forward,
    generator,
    modality_of,
)


@dataclass
class AuditData:
    """The data an audit runs on: :class:`~mlsafety.core.ArrayDataset` for an image model,
    :class:`~mlsafety.core.TextDataset` for a text model (same interface: ``.x``, ``.y``, ``.name``,
    ``.kind``, ``.source``; ``.x`` is a :class:`~mlsafety.core.Texts`). For a causal language model
    ``test`` is the prompt set (a ``TextDataset``), ``val`` may be empty (``len(val) == 0``) and ``ood``
    holds only the sets the user named.

    Attributes:
        test: labelled in-distribution test data (the ``clean`` hazard).
        val: labelled in-distribution validation data (thresholds, temperatures, tuning); empty
            for a language model given no ``--val``.
        train: training data when available (detectors fit on it; trojan data scanners read it).
        ood: out-of-distribution sets by name (hazards ``ood/<name>``).
    """

    test: ArrayDataset
    val: ArrayDataset
    train: ArrayDataset | None = None
    ood: dict[str, ArrayDataset] = field(default_factory=dict)

    @property
    def fit(self) -> ArrayDataset:
        """In-distribution data to fit detectors on: the training split when given, else val."""
        return self.train if self.train is not None else self.val

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``: what the test data holds."""
        return modality_of(self.test)


Scorer = Callable[[Sequence[str]], torch.Tensor]
"""A reward function ``scorer(texts) -> Tensor (N,)`` (``--reward`` / ``--gold``)."""

HazardProvider = Callable[["AuditContext", Hazard], ArrayDataset]
_PROVIDERS: dict[str, HazardProvider] = {}


def hazard_provider(kind: str) -> Callable[[HazardProvider], HazardProvider]:
    """Register the function that makes the inputs of hazards of ``kind`` (``Hazard.kind``).

    The function gets the context and the typed :class:`~mlsafety.core.Hazard` (its ``name``,
    ``severity``, ``eps`` ...; never a string to split) and returns an :class:`ArrayDataset` with
    the true labels (``-1`` for OOD). It must be deterministic given the run seed and the hazard,
    so any check can ask for any hazard in any order.
    """

    def decorator(fn: HazardProvider) -> HazardProvider:
        if kind in _PROVIDERS:
            raise ValueError(f"hazard kind {kind!r} already has a provider")
        _PROVIDERS[kind] = fn
        return fn

    return decorator


@hazard_provider("clean")
def _clean(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    if hazard != Hazard.clean():
        raise UnknownNameError(f"unknown hazard {str(hazard)!r}; the clean test data is the hazard 'clean'")
    return ctx.data.test


@hazard_provider("ood")
def _ood(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    if hazard.name not in ctx.data.ood:
        raise UnknownNameError(f"unknown OOD set {hazard.name!r}; this audit has: {', '.join(ctx.data.ood) or 'none'}")
    return ctx.data.ood[hazard.name]


class AuditContext:
    """Everything a check may use; forward outputs and hazard inputs are computed once and shared.

    Args:
        model: the audited classifier, or the audited :class:`~mlsafety.core.LanguageModel` (modality
            ``"lm"``; :attr:`lm` gives it typed).
        data: the audit's data (for a language model, ``data.test`` is the prompt set).
        seed: the run seed; :meth:`generator` derives task generators from it.
        quick: the reduced profile (``--quick``).
        progress: progress display for long loops (None: silent).
        batch_size: inputs per forward pass.
        check_params: the parameters of every enabled check, by check name.
        reward: the proxy reward being optimised (``--reward``), language models only; None when not given.
        gold: the gold (trusted) reward (``--gold``); None when not given.
    """

    def __init__(
        self,
        model: Classifier | LanguageModel,
        data: AuditData,
        seed: int = 0,
        quick: bool = False,
        progress: Progress | None = None,
        batch_size: int = 256,
        check_params: dict[str, dict[str, Any]] | None = None,
        reward: Scorer | None = None,
        gold: Scorer | None = None,
    ) -> None:
        self._lm = model if isinstance(model, LanguageModel) else None
        # typed as the classifier the image and text checks take; an "lm" check reads ctx.lm
        self.model: Classifier = cast(Classifier, model)
        self.reward = reward
        self.gold = gold
        self.data = data
        self.seed = seed
        self.quick = quick
        self.progress = progress
        self.batch_size = batch_size
        self.check_params: dict[str, dict[str, Any]] = check_params or {}
        self.planned_hazards: list[Hazard] = []
        """The hazards the enabled checks produce (typed: an attack's ``norm`` and producing check
        travel with them), so a consumer such as defence-in-depth never re-derives them."""
        self._hazards: dict[str, ArrayDataset] = {}
        self._outputs: dict[str, Outputs] = {}
        self.deadline: float | None = None
        """Under ``--budget``: the ``time.perf_counter()`` by which the running task should end (the engine
        sets it before each task); a task's long loops stop there after their first unit of work and store
        rows for the n they reached. None (no budget): every loop runs to its configured size."""
        self.earlier: dict[tuple[str, str], list[Any]] = {}
        """Stored rows of tasks that a later task :attr:`~mlsafety.audit._check.Task.needs`, by (check, task
        key): filled by the engine and the executors (:meth:`rows_of` reads them)."""
        self.shared_seconds: float = 0.0
        """Seconds spent so far in the shared forward passes (test, OOD, validation and training inputs: the
        budget's "forward passes" cost), inside whichever task first asked for them; the engine's budget
        tracker tells them from the checks' own work with it."""
        self.task_estimate: float = 0.0
        """Under ``--budget``: the predicted seconds of the running task (its check's prediction over its tasks,
        scaled by the measured speed), what an optional loop's first unit is taken to cost when no unit of its
        kind has run yet."""

    def rows_of(self, check: str, key: str) -> list[Any]:
        """The rows (:class:`~mlsafety.audit._check.Row`) task ``key`` of ``check`` stored in this run; only for
        a task the caller named in its ``needs`` (a :class:`KeyError` otherwise: a programming error)."""
        try:
            return self.earlier[(check, key)]
        except KeyError:
            raise KeyError(f"task {check}/{key} is not among the needs of the running task") from None

    def past_deadline(self) -> bool:
        """True when the running task has a deadline (``--budget``) and it has passed."""
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def has_hazard(self, hazard: Hazard | str) -> bool:
        """Whether the inputs of ``hazard`` were already built in this run (nothing is computed)."""
        return str(Hazard.parse(hazard)) in self._hazards

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def modality(self) -> str:
        """``"image"``, ``"text"`` (a classifier of either) or ``"lm"`` (a causal language model): what
        the audited model is (checks declare which they support)."""
        return "lm" if self._lm is not None else modality_of(self.model)

    @property
    def lm(self) -> LanguageModel:
        """The audited causal language model (``ctx.model`` typed as such); only when ``modality == "lm"``.

        Raises:
            TypeError: the model is a classifier (a check that reads ``ctx.lm`` without declaring
                ``modalities = ("lm",)``: a programming error, not the user's input).
        """
        if self._lm is None:
            raise TypeError(f"the audited model is a {self.modality} classifier, not a language model; "
                             "declare modalities = (\"lm\",) on checks that read ctx.lm")  # fmt: skip
        return self._lm

    def generator(self, *names: object) -> torch.Generator:
        """A CPU generator derived from the run seed and ``names`` (order-independent).

        Name the check and the task (``ctx.generator("certified", sigma, "inputs")``): two tasks
        never share a stream, and a task's stream does not depend on which other tasks run.
        """
        return generator(self.seed, *names)

    def seed_for(self, *names: object) -> int:
        """An integer seed derived like :meth:`generator`, for the seeded APIs that take one (the
        bootstrap intervals of :mod:`mlsafety.metrics`, an algorithm's ``seed`` hyper-parameter,
        a training recipe). Never the raw run seed."""
        return derive_seed(self.seed, *names)

    def hazard(self, hazard: Hazard | str) -> ArrayDataset:
        """Inputs and true labels of ``hazard`` (a :class:`Hazard`, or its string form such as
        ``clean`` or ``ood/letters``), cached."""
        h = Hazard.parse(hazard)
        key = str(h)
        if key not in self._hazards:
            provider = _PROVIDERS.get(h.kind)
            if provider is None:
                raise UnknownNameError(
                    f"unknown hazard kind {h.kind!r} in {key!r}; known: {', '.join(sorted(_PROVIDERS))}"
                )
            self._hazards[key] = provider(self, h)
        return self._hazards[key]

    def forward(self, x: Any) -> Outputs:
        """One forward pass over inputs ``x`` (images or texts; :meth:`outputs` caches per hazard)."""
        return forward(self.model, x, self.batch_size, progress=self.progress)

    def outputs(self, hazard: Hazard | str) -> Outputs:
        """Logits and features of ``hazard`` from one shared forward pass, cached (or the outputs its
        inputs carry as ``outputs``: what a test-time-adapted model gave them)."""
        key = str(Hazard.parse(hazard))
        if key not in self._outputs:
            data = self.hazard(key)
            own = getattr(data, "outputs", None)  # a hazard whose model adapts to it (tta-attack) brings its own
            if isinstance(own, Outputs):
                self._outputs[key] = own
            else:
                t0 = time.perf_counter()
                self._outputs[key] = self.forward(data.x)
                if Hazard.parse(key).kind in ("clean", "ood"):  # the shared passes (the budget costs them apart)
                    self.shared_seconds += time.perf_counter() - t0
        return self._outputs[key]

    def labels(self, hazard: Hazard | str) -> torch.Tensor:
        """True labels of ``hazard`` on the model's device (-1 for OOD inputs)."""
        return self.hazard(hazard).y.to(self.device)

    def outputs_for(self, data: ArrayDataset) -> Outputs:
        """Forward outputs for a named dataset that is not a hazard (``val``, ``train``), cached."""
        key = f"#data/{data.name}/{id(data)}"
        if key not in self._outputs:
            t0 = time.perf_counter()
            self._outputs[key] = self.forward(data.x)
            self.shared_seconds += time.perf_counter() - t0
        return self._outputs[key]
