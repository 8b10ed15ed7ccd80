"""The transparency figures the audit stores, with their intervals: sanity-check summaries of
attribution methods, integrated gradients' completeness gap, and the confidence the model gives its
own class visualisations.

Example:
    >>> from mlsafety.monitoring import transparency as tr
    >>> methods = {n: tr.create(n) for n in ("saliency", "integrated-gradients")}
    >>> report = tr.sanity_summary(methods, model, x, modes=("cascading",))
    >>> report.pass_share, report.results["saliency"]["cascading"].spearman
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    DataLike,
    InputError,
    ModelLike,
    TextDataset,
    derive_seed,
    forward,
    generator,
)
from mlsafety.metrics import Estimate, bootstrap_mean
from mlsafety.monitoring.transparency.base import Attribution, Target, TextLike
from mlsafety.monitoring.transparency.feature_vis import visualize
from mlsafety.monitoring.transparency.integrated_gradients import IntegratedGradients
from mlsafety.monitoring.transparency.sanity import SanityResult, sanity_check


@dataclass(frozen=True)
class SanitySummary:
    """One method under one randomisation test, summarised per input.

    Attributes:
        result: the test's similarities per stage and input.
        spearman: mean rank correlation with the original maps, per input at the last cascading
            stage (averaged over layers for the independent test), with a bootstrap 95% interval.
        ssim: the same for SSIM (None on text, where SSIM is not computed).
    """

    result: SanityResult
    spearman: Estimate
    ssim: Estimate | None

    @property
    def passed(self) -> bool:
        """True when the method's maps change under this randomisation."""
        return self.result.passed


@dataclass(frozen=True)
class SanityReport:
    """Sanity-check summaries of several methods.

    Attributes:
        results: ``results[method][mode]``, methods and modes in the order given.
        n_inputs: the inputs the maps were compared on.
    """

    results: dict[str, dict[str, SanitySummary]]
    n_inputs: int

    @property
    def passed_methods(self) -> list[str]:
        """Methods that pass every test they ran, in order."""
        return [m for m, by_mode in self.results.items() if all(s.passed for s in by_mode.values())]

    @property
    def pass_share(self) -> float | None:
        """The share of methods passing every test (None when no test ran)."""
        if not self.results or not any(self.results.values()):
            return None
        return len(self.passed_methods) / len(self.results)


def _per_input(result: SanityResult, sims: torch.Tensor) -> torch.Tensor:
    """Per-input similarity: the mean over layers (independent) or the last stage (cascading, label)."""
    return sims.mean(dim=0) if result.mode == "independent" else sims[-1]


def sanity_summary(
    methods: Mapping[str, Attribution],
    model: ModelLike,
    x: torch.Tensor | TextLike,
    modes: Sequence[str] = ("cascading", "independent"),
    threshold: float = 0.5,
    *,
    generator_for: Callable[[str], torch.Generator] | None = None,
    seed_for: Callable[[str, str], int] | None = None,
    train: Callable[[ArrayDataset | TextDataset], nn.Module] | None = None,
    data: DataLike | TextDataset | None = None,
    target: Target | None = None,
) -> SanityReport:
    """Sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", 2018) of every method in
    every mode, each similarity as a mean over inputs with a seeded bootstrap 95% interval.

    Args:
        methods: attribution methods by name (the name labels the results).
        model: the model whose explanations are tested (left unchanged).
        x: inputs (N, ...) or texts, usually correctly classified ones.
        modes: tests among ``cascading``, ``independent``, ``label``.
        threshold: rank correlation below which maps count as changed.
        generator_for: the generator of each mode's re-initialisations; a fresh one per call, so
            every method sees the same re-initialised layers (default: ``generator(0, "sanity", mode)``).
        seed_for: the bootstrap seed of ``(method, mode)`` (default: ``derive_seed(0, method, mode)``);
            the Spearman interval draws under the name ``"<method>-<mode>"``, SSIM under ``"<method>-<mode>-ssim"``.
        train: for ``label``: a recipe that trains a fresh model on the data it is given.
        data: for ``label``: the training data whose labels are permuted.
        target: classes to explain (default: the model's predictions).
    """
    if generator_for is None:
        generator_for = lambda mode: generator(0, "sanity", mode)  # noqa: E731
    if seed_for is None:
        seed_for = lambda method, mode: derive_seed(0, method, mode)  # noqa: E731
    results: dict[str, dict[str, SanitySummary]] = {}
    for name, method in methods.items():
        results[name] = {}
        for mode in modes:
            res = sanity_check(method, model, x, target, mode=mode, threshold=threshold,
                               generator=generator_for(mode), train=train, data=data)  # fmt: skip
            seed = seed_for(name, mode)
            rho = bootstrap_mean(_per_input(res, res.spearman).float(), seed=seed, name=f"{name}-{mode}")
            ss = (
                None
                if res.ssim is None
                else bootstrap_mean(_per_input(res, res.ssim).float(), seed=seed, name=f"{name}-{mode}-ssim")
            )
            results[name][mode] = SanitySummary(res, rho, ss)
    return SanityReport(results, len(x))


def ig_completeness(
    model: ModelLike, x: torch.Tensor | TextLike, target: Target, ig: IntegratedGradients | None = None,
    seed: int = 0,
) -> Estimate:  # fmt: skip
    """Integrated gradients' mean absolute completeness gap ``|sum(attr) - (F(x) - F(baseline))|``
    over inputs, with a seeded bootstrap 95% interval (drawn under the name ``"ig"``): the
    quadrature's numerical error, to watch when choosing ``steps``.

    Args:
        model: the classifier.
        x: inputs (N, ...), or texts (the gap of the token scores' sum).
        target: classes to explain, one for all or one per input.
        ig: the method (default: :class:`IntegratedGradients` with its defaults).
        seed: bootstrap seed.
    """
    ig = IntegratedGradients() if ig is None else ig
    _, delta = ig.attribute_with_delta(model, x, target)
    return bootstrap_mean(delta.abs().cpu(), seed=seed, name="ig")


@dataclass(frozen=True)
class ClassVisualisations:
    """Inputs optimised to maximise each class's logit, and the model's confidence in them.

    Attributes:
        images: (K, C, H, W) in [0, 1], one per class, on the CPU.
        confidence: (K,) the softmax probability of class ``k`` for image ``k``.
        mean_confidence: its mean over classes with a bootstrap 95% interval.
    """

    images: torch.Tensor
    confidence: torch.Tensor
    mean_confidence: Estimate


def class_visualisations(
    model: ModelLike,
    shape: Sequence[int],
    num_classes: int,
    steps: int = 60,
    lr: float = 0.1,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> ClassVisualisations:
    """One image per class maximising its logit (:func:`visualize`), with the model's confidence.

    Args:
        model: the classifier.
        shape: one input's shape (C, H, W).
        num_classes: classes to visualise (``0 .. num_classes - 1``).
        steps: optimisation steps.
        lr: step size.
        generator: source of the parameterisation's start and the random transforms.
        seed: bootstrap seed of the mean confidence (drawn under the name ``"confidence"``).
    """
    if len(shape) != 3:
        raise InputError(f"class visualisation needs image inputs (C, H, W), got shape {tuple(shape)}")
    c, h, w = shape
    imgs = visualize(model, list(range(num_classes)), (c, h, w), steps=steps, lr=lr, generator=generator)
    probs = forward(model, imgs, features=False).probs.diagonal().cpu()
    est = bootstrap_mean(probs.double(), seed=seed, name="confidence")
    return ClassVisualisations(imgs.cpu(), probs, est)
