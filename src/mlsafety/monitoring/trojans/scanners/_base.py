"""What every trojan scanner shares: the base class, its result types and the registry.

A scanner answers "is this model trojaned, towards which class, with what trigger?". It writes one
method, :meth:`Scanner._scan`, for one seed; :meth:`Scanner.scan` does the chores: wraps the model,
checks the data, freezes the model (eval mode, parameter gradients off; everything restored on
exit, also after an exception), runs every seed, and aggregates the seeds into a verdict with its
spread.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mlsafety.core import (
    ArrayDataset,
    Classifier,
    DataLike,
    HyperParams,
    InputError,
    ModelLike,
    Param,
    Progress,
    Registry,
    as_array_dataset,
    as_classifier,
    check_images,
    check_labels,
    frozen,
    generator,
)


@dataclass(frozen=True)
class Trigger:
    """A recovered (or known) trigger: ``x' = (1 - mask) x + mask * pattern``.

    Attributes:
        mask: (1, H, W) in [0, 1].
        pattern: (C, H, W) in [0, 1].
        target: the class the trigger drives inputs to.
        source: what recovered it (scanner name).
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    target: int
    source: str = ""

    @property
    def name(self) -> str:
        """Short name used in hazards: ``<source>-class-<target>``."""
        return f"{self.source or 'trigger'}-class-{self.target}"

    @property
    def l1(self) -> float:
        return float(self.mask.abs().sum())

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on ``x`` (N, C, H, W) in [0, 1]; returns a new tensor on x's device."""
        mask = self.mask.to(x.device, x.dtype)
        pattern = self.pattern.to(x.device, x.dtype)
        return ((1 - mask) * x + mask * pattern).clamp(0, 1)


@dataclass
class SeedScan:
    """One seed's findings (what :meth:`Scanner._scan` returns).

    Attributes:
        score: model-level score; higher = more likely trojaned.
        targets: suspected target classes (empty when nothing is suspected).
        per_class: a per-class statistic (K,) (e.g. Neural Cleanse's anomaly index), or None.
        triggers: recovered triggers by class.
        sample_scores: per-sample scores (N,) for data-level scanners (higher = more suspicious).
        extra: anything else worth reporting (numbers only).
    """

    score: float
    targets: list[int] = field(default_factory=list)
    per_class: torch.Tensor | None = None
    triggers: dict[int, Trigger] = field(default_factory=dict)
    sample_scores: torch.Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ScanResult:
    """A scanner's verdict on one model, over several seeds.

    Attributes:
        scanner: registry name.
        score: mean model-level score over seeds (higher = more likely trojaned).
        score_std: standard deviation of the score over seeds (0 for one seed).
        scores: the score of every seed.
        threshold: the documented decision threshold of the scanner.
        flagged: verdict: ``score > threshold``.
        flag_rate: share of seeds whose own score exceeds the threshold (the verdict's spread).
        targets: suspected target classes, those named by a majority of seeds; when the model is
            flagged but no class has a majority, the class named by most seeds (ties: the smallest),
            else the arg-max of ``per_class``.
        per_class: mean over seeds of the per-class statistic (K,), or None.
        triggers: recovered triggers by class, from the first seed.
        sample_scores: mean over seeds of the per-sample scores (N,), or None.
        extra: the first seed's extra figures.
        runs: every seed's own findings, in the order of ``seeds`` (for intervals over seeds or
            over what each seed measured).
    """

    scanner: str
    score: float
    score_std: float
    scores: list[float]
    threshold: float
    flagged: bool
    flag_rate: float
    targets: list[int]
    per_class: torch.Tensor | None = None
    triggers: dict[int, Trigger] = field(default_factory=dict)
    sample_scores: torch.Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)
    runs: list[SeedScan] = field(default_factory=list)

    @property
    def target(self) -> int | None:
        """The single most suspected target class, or None."""
        return self.targets[0] if self.targets else None


@dataclass(frozen=True)
class ScanData:
    """What a scanner may look at.

    Attributes:
        clean: labelled clean held-out inputs (the defender's small clean set).
        train: the (possibly poisoned) training set, for data-level scanners.
        probe: inputs seen at run time (possibly carrying a trigger), for input-level scanners.
    """

    clean: ArrayDataset
    train: ArrayDataset | None = None
    probe: torch.Tensor | None = None


def int_tuple(value: Iterable[Any]) -> tuple[int, ...]:
    """``value`` as a tuple of ints (a string or a non-integral number is refused)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(value)
    out = []
    for v in value:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(v)
        out.append(int(v))
    return tuple(out)


int_tuple.__name__ = "tuple of integers"  # read by the one-line error for a value it refuses


def _one_seed_at_least(seeds: tuple[int, ...]) -> str | None:
    return None if seeds else "must hold at least one seed"


class Scanner(HyperParams):
    """Base class of trojan scanners; subclasses write :meth:`_scan` for one seed.

    Subclasses set ``needs`` (which of ``clean``, ``train``, ``probe`` they read) and declare their
    hyper-parameters with :class:`~mlsafety.core.Param`; ``seeds`` and ``threshold`` are declared
    here (a scanner re-declares ``threshold`` with its own default). Constructors only store them.
    """

    seeds: Param[tuple[int, ...]] = Param(
        (0, 1, 2), int_tuple, check=_one_seed_at_least, doc="one run per seed; the score is their mean"
    )
    threshold = Param(0.0, float, doc="score above which the model is flagged")

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"clean"})

    def scan(
        self,
        model: ModelLike,
        clean: DataLike,
        train: DataLike | None = None,
        probe: torch.Tensor | None = None,
        progress: Progress | None = None,
    ) -> ScanResult:
        """Scan ``model``; see :class:`ScanData` for the data and :class:`ScanResult` for the answer.

        ``clean`` and ``train`` take any form of :data:`mlsafety.core.DataLike` (an ArrayDataset, a
        torch Dataset of ``(x, y)``, a DataLoader, tensors ``(x, y)``); a loader is read once, in order.
        """
        clf = as_classifier(model)
        data = ScanData(
            as_array_dataset(clean, "clean"), None if train is None else as_array_dataset(train, "train"), probe
        )
        self._check_data(clf, data)
        runs: list[SeedScan] = []
        with frozen(clf.module):
            for seed in self.seeds:
                runs.append(self._scan(clf, data, generator(seed, "scanner", self.name)))
        return self._aggregate(runs)

    def _check_data(self, clf: Classifier, data: ScanData) -> None:
        check_images(data.clean.x, "clean inputs")
        check_labels(data.clean.y, clf.num_classes, "clean labels")
        if "train" in self.needs:
            if data.train is None:
                raise InputError(f"scanner {self.name!r} needs the training set (train=...)")
            check_images(data.train.x, "training inputs")
            check_labels(data.train.y, clf.num_classes, "training labels")
        if "probe" in self.needs:
            if data.probe is None:
                raise InputError(f"scanner {self.name!r} needs run-time inputs to inspect (probe=...)")
            check_images(data.probe, "probe inputs")

    def _scan(self, clf: Classifier, data: ScanData, g: torch.Generator) -> SeedScan:
        raise NotImplementedError

    def _aggregate(self, runs: list[SeedScan]) -> ScanResult:
        scores = [float(r.score) for r in runs]
        mean = statistics.fmean(scores)
        std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        votes: Counter[int] = Counter(t for r in runs for t in set(r.targets))
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
        targets = [t for t, c in ranked if c * 2 > len(runs)]
        per_class = _mean_or_none([r.per_class for r in runs])
        flagged = mean > self.threshold
        if flagged and not targets:
            # the verdict stands on the mean score; name the class most seeds (or the mean statistic) point to
            if ranked:
                targets = [ranked[0][0]]
            elif per_class is not None:
                targets = [int(per_class.argmax())]
        samples = _mean_or_none([r.sample_scores for r in runs])
        return ScanResult(
            scanner=self.name,
            score=mean,
            score_std=std,
            scores=scores,
            threshold=self.threshold,
            flagged=flagged,
            flag_rate=sum(s > self.threshold for s in scores) / len(scores),
            targets=targets,
            per_class=per_class,
            triggers=runs[0].triggers,
            sample_scores=samples,
            extra=runs[0].extra,
            runs=list(runs),
        )


def _mean_or_none(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    return torch.stack([t.float() for t in present]).mean(dim=0)


SCANNERS: Registry[Scanner] = Registry("scanner")
register_scanner = SCANNERS.register


def sample_batch(x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``x`` drawn with replacement by ``g`` (indices drawn on the CPU)."""
    idx = torch.randint(0, x.shape[0], (n,), generator=g)
    return x[idx.to(x.device)]


def class_balanced(data: ArrayDataset, per_class: int, g: torch.Generator) -> ArrayDataset:
    """Up to ``per_class`` random samples of every class present in ``data``."""
    picks = []
    for k in sorted(set(data.y.tolist())):
        pool = (data.y == k).nonzero().flatten()
        picks.append(pool[torch.randperm(len(pool), generator=g)[:per_class]])
    return data.subset(torch.cat(picks))
