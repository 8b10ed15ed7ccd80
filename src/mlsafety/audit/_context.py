"""The context a check runs in: model, data, hazards, shared forward outputs, generators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    InputError,
    Outputs,
    Progress,
    UnknownNameError,
    derive_seed,
    forward,
    generator,
)


@dataclass
class AuditData:
    """The data an audit runs on.

    Attributes:
        test: labelled in-distribution test data (the ``clean`` hazard).
        val: labelled in-distribution validation data (thresholds, temperatures, tuning).
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


HazardProvider = Callable[["AuditContext", str], ArrayDataset]
_PROVIDERS: dict[str, HazardProvider] = {}


def hazard_provider(kind: str) -> Callable[[HazardProvider], HazardProvider]:
    """Register the function that makes the inputs of hazards ``<kind>/...``.

    The function gets the context and the rest of the hazard name (after ``<kind>/``) and returns
    an :class:`ArrayDataset` with the true labels (``-1`` for OOD). It must be deterministic given
    ``ctx.generator(hazard)``, so any check can ask for any hazard in any order.
    """

    def decorator(fn: HazardProvider) -> HazardProvider:
        if kind in _PROVIDERS:
            raise ValueError(f"hazard kind {kind!r} already has a provider")
        _PROVIDERS[kind] = fn
        return fn

    return decorator


@hazard_provider("clean")
def _clean(ctx: AuditContext, rest: str) -> ArrayDataset:
    if rest:
        raise UnknownNameError(f"unknown hazard 'clean/{rest}'")
    return ctx.data.test


@hazard_provider("ood")
def _ood(ctx: AuditContext, rest: str) -> ArrayDataset:
    if rest not in ctx.data.ood:
        raise UnknownNameError(f"unknown OOD set {rest!r}; this audit has: {', '.join(ctx.data.ood) or 'none'}")
    return ctx.data.ood[rest]


class AuditContext:
    """Everything a check may use; forward outputs and hazard inputs are computed once and shared.

    Args:
        model: the audited classifier.
        data: the audit's data.
        seed: the run seed; :meth:`generator` derives task generators from it.
        quick: the reduced profile (``--quick``).
        progress: progress display for long loops (None: silent).
        batch_size: inputs per forward pass.
        check_params: the parameters of every enabled check, by check name.
    """

    def __init__(
        self,
        model: Classifier,
        data: AuditData,
        seed: int = 0,
        quick: bool = False,
        progress: Progress | None = None,
        batch_size: int = 256,
        check_params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.seed = seed
        self.quick = quick
        self.progress = progress
        self.batch_size = batch_size
        self.check_params: dict[str, dict[str, Any]] = check_params or {}
        self.planned_hazards: list[str] = []
        self._hazards: dict[str, ArrayDataset] = {}
        self._outputs: dict[str, Outputs] = {}

    @property
    def device(self) -> torch.device:
        return self.model.device

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

    def hazard(self, name: str) -> ArrayDataset:
        """Inputs and true labels of hazard ``name`` (e.g. ``clean``, ``ood/letters``), cached."""
        if name not in self._hazards:
            kind, _, rest = name.partition("/")
            provider = _PROVIDERS.get(kind)
            if provider is None:
                raise UnknownNameError(
                    f"unknown hazard kind {kind!r} in {name!r}; known: {', '.join(sorted(_PROVIDERS))}"
                )
            self._hazards[name] = provider(self, rest)
        return self._hazards[name]

    def outputs(self, name: str) -> Outputs:
        """Logits and features of hazard ``name`` from one shared forward pass, cached."""
        if name not in self._outputs:
            self._outputs[name] = forward(self.model, self.hazard(name).x, self.batch_size, progress=self.progress)
        return self._outputs[name]

    def labels(self, name: str) -> torch.Tensor:
        """True labels of hazard ``name`` on the model's device (-1 for OOD inputs)."""
        return self.hazard(name).y.to(self.device)

    def outputs_for(self, data: ArrayDataset) -> Outputs:
        """Forward outputs for a named dataset that is not a hazard (``val``, ``train``), cached."""
        key = f"#data/{data.name}/{id(data)}"
        if key not in self._outputs:
            self._outputs[key] = forward(self.model, data.x, self.batch_size, progress=self.progress)
        return self._outputs[key]

    def params_of(self, check: str) -> dict[str, Any]:
        """The parameters of an enabled check (for hazard providers that need them)."""
        if check not in self.check_params:
            raise InputError(f"check {check!r} is not part of this audit")
        return self.check_params[check]
