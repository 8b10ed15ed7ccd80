"""Robust accuracy of a model under an attack, with exact intervals and sanity flags.

One implementation for the library and the audit: :func:`evaluate` attacks the data and
:func:`evaluate_outputs` starts from predictions already made (the audit shares its forward passes);
both summarise per-input outcomes with :func:`summarize_attack`. :func:`summarize_certificates` does
the same for randomized-smoothing certificates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from mlsafety.core import (
    DataLike,
    InputError,
    ModelLike,
    Progress,
    as_classifier,
    frozen,
    iter_batches,
    track,
)
from mlsafety.metrics import Estimate, bootstrap_mean, bootstrap_statistic, median, proportion
from mlsafety.robustness.attacks.base import Attack, lp_norm
from mlsafety.robustness.smoothing import ABSTAIN, Certificate


@dataclass(frozen=True)
class AttackSummary:
    """Robust accuracy and what the attack achieved, from per-input outcomes (:func:`summarize_attack`).

    Attributes:
        clean_accuracy: accuracy on the unperturbed inputs (exact 95% Clopper-Pearson interval).
        robust_accuracy: share of inputs classified correctly both clean and under attack (exact
            95% interval): a clean error counts as non-robust, as in AutoAttack.
        attack_success_rate: share of the correctly classified inputs the attack broke (exact
            interval); None when no input was classified correctly.
        median_perturbation_norm: median ``norm`` of ``x_adv - x`` over the broken inputs, with a
            percentile-bootstrap interval over them; None when none broke (or no inputs were given).
        norm: the norm of ``median_perturbation_norm`` (``linf`` / ``l2``).
        broken: (N,) bool, per input: classified correctly clean and wrongly under attack.
    """

    clean_accuracy: Estimate
    robust_accuracy: Estimate
    attack_success_rate: Estimate | None
    median_perturbation_norm: Estimate | None
    norm: str
    broken: torch.Tensor


@dataclass(frozen=True)
class RobustnessResult(AttackSummary):
    """What :func:`evaluate` measured: the :class:`AttackSummary` and the attack's report.

    Attributes:
        warnings: sanity flags (name -> explanation), see :func:`sanity_flags`.
        broken_by: for ensembles, points broken by each member.
        x_adv: the adversarial inputs (on the inputs' device), for plots.
        pred_adv: predictions on ``x_adv``.
    """

    warnings: dict[str, str] = field(default_factory=dict)
    broken_by: dict[str, int] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None
    pred_adv: torch.Tensor | None = None


def summarize_attack(
    clean_correct: torch.Tensor,
    adv_correct: torch.Tensor,
    perturbation_norms: torch.Tensor | None,
    norm: str,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> AttackSummary:
    """Robust accuracy, success rate and median perturbation norm from per-input outcomes.

    Args:
        clean_correct: (N,) bool, the clean input is classified correctly.
        adv_correct: (N,) bool, the adversarial input is classified correctly (and-ed with
            ``clean_correct``: a clean error is never robust).
        perturbation_norms: ``norm`` of ``x_adv - x`` of the broken inputs, in input order (the
            median's bootstrap resamples them); None to skip the median.
        norm: ``linf`` or ``l2``.
        n_boot: bootstrap resamples of the median norm.
        seed: seed of the median's bootstrap.
    """
    clean_ok = clean_correct.bool().cpu()
    adv_ok = adv_correct.bool().cpu() & clean_ok
    broken = clean_ok & ~adv_ok
    n_ok = int(clean_ok.sum())
    asr = proportion(int(broken.sum()), n_ok) if n_ok else None
    med = None
    if perturbation_norms is not None and perturbation_norms.numel():
        med = bootstrap_statistic(median, perturbation_norms, n_boot=n_boot, seed=seed, name="norm")
    return AttackSummary(proportion(clean_ok), proportion(adv_ok), asr, med, norm, broken)


def evaluate_outputs(
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    x_clean: torch.Tensor | None = None,
    x_adv: torch.Tensor | None = None,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> AttackSummary:
    """:func:`summarize_attack` from predictions already made (the audit shares its forward passes).

    Args:
        pred_clean: (N,) predicted classes of the clean inputs.
        pred_adv: (N,) predicted classes of their adversarial versions.
        y: (N,) labels, on the predictions' device.
        norm: the threat model's norm (``linf`` / ``l2``), for the perturbation norms.
        x_clean, x_adv: the inputs (same order, on one device), for the median perturbation norm
            (in float64); without them the median is None.
        n_boot, seed: the median's bootstrap.

    Example:
        >>> s = evaluate_outputs(model(x).argmax(1), model(x_adv).argmax(1), y, "linf", x, x_adv)
        >>> s.robust_accuracy.value, s.median_perturbation_norm
    """
    if norm not in ("linf", "l2"):
        raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not pred_clean.shape == pred_adv.shape == y.shape or pred_clean.dim() != 1:
        raise InputError(
            f"pred_clean, pred_adv and y must be (N,) tensors of one length, got {tuple(pred_clean.shape)}, "
            f"{tuple(pred_adv.shape)} and {tuple(y.shape)}"
        )
    clean_ok = (pred_clean == y).cpu()
    adv_ok = (pred_adv == y).cpu() & clean_ok
    norms = None
    if x_clean is not None and x_adv is not None:
        broken = (clean_ok & ~adv_ok).to(x_adv.device)
        norms = lp_norm((x_adv[broken] - x_clean[broken]).double(), norm)
    return summarize_attack(clean_ok, adv_ok, norms, norm, n_boot=n_boot, seed=seed)


def evaluate(
    model: ModelLike,
    data: DataLike,
    attack: Attack,
    batch_size: int = 512,
    keep_adversarials: bool = False,
    progress: Progress | None = None,
    generator: torch.Generator | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> RobustnessResult:
    """Robust accuracy of ``model`` on ``data`` under ``attack``.

    Args:
        model: the classifier.
        data: labelled inputs in [0, 1], any form of :data:`mlsafety.core.DataLike`: an
            :class:`~mlsafety.core.ArrayDataset`, a torch Dataset of ``(x, y)``, a DataLoader of
            ``(x, y)`` batches (streamed, never gathered) or tensors ``(x, y)``.
        attack: any registered attack, e.g. ``create("autoattack", eps=8/255)``.
        batch_size: inputs per attack call when ``data`` is not already batched.
        keep_adversarials: keep ``x_adv`` and its predictions in the result.
        progress: show progress over batches.
        generator: source of the attack's random starts and targets, continued from batch to batch
            (default: the attack's own generator, from its ``seed``).
        n_boot: bootstrap resamples of the median perturbation norm's interval.
        seed: seed of that bootstrap.

    Example:
        >>> res = evaluate(model, (x, y), create("apgd-ce", eps=0.1))
        >>> res.robust_accuracy.value, res.robust_accuracy.ci_low
    """
    clf = as_classifier(model)
    device = clf.device
    correct_clean, correct_adv, norms, advs, preds = [], [], [], [], []
    warnings: dict[str, str] = {}
    broken_by: dict[str, int] = {}
    flagged = False
    g = generator if generator is not None else attack.generator()
    for xb, yb in track(iter_batches(data, batch_size, "data"), progress, f"attack {getattr(attack, 'name', '')}"):
        assert yb is not None  # labelled data: iter_batches refuses batches without labels
        with frozen(clf.module), torch.inference_mode():
            ok = clf.logits(xb.to(device)).argmax(dim=1).cpu() == yb.cpu()
        x_adv = xb.clone()
        if bool(ok.any()):
            idx = ok.nonzero()[:, 0].to(xb.device)
            if not flagged:
                warnings.update(sanity_flags(clf, xb[idx], yb[idx]))
                flagged = True
            out = attack.run(clf, xb[idx], yb[idx], generator=g)
            warnings.update(out.warnings)
            for key, count in out.broken_by.items():
                broken_by[key] = broken_by.get(key, 0) + count
            x_adv[idx] = out.x_adv
        with frozen(clf.module), torch.inference_mode():
            pred = clf.logits(x_adv.to(device)).argmax(dim=1).cpu()
        still = ok & (pred == yb.cpu())
        broken = ok & ~still
        correct_clean.append(ok)
        correct_adv.append(still)
        if bool(broken.any()):
            b = broken.to(xb.device)
            norms.append(lp_norm((x_adv[b] - xb[b]).double(), attack.norm).cpu())
        if keep_adversarials:
            advs.append(x_adv)
            preds.append(pred)
    if not correct_clean:
        raise InputError("no data to evaluate: give at least one labelled input")
    norm_cat = torch.cat(norms) if norms else None
    s = summarize_attack(torch.cat(correct_clean), torch.cat(correct_adv), norm_cat, attack.norm, n_boot=n_boot,
                         seed=seed)  # fmt: skip
    return RobustnessResult(
        **{f.name: getattr(s, f.name) for f in fields(AttackSummary)},
        warnings=warnings,
        broken_by=broken_by,
        x_adv=torch.cat(advs) if keep_adversarials else None,
        pred_adv=torch.cat(preds) if keep_adversarials else None,
    )


def sanity_flags(model: ModelLike, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
    """AutoAttack's checks that a robustness number may be an artefact of the defence.

    * ``zero_gradients``: some inputs have an all-zero input gradient of the cross-entropy, so
      gradient attacks cannot move them (gradient masking or saturated logits).
    * ``randomized_outputs``: two forward passes in eval mode disagree, so the model is randomised
      and attacks need expectation over transformation (EOT).

    Returns:
        flag name -> one-line explanation, empty when all checks pass.
    """
    clf = as_classifier(model)
    device = clf.device
    x = x.to(device)
    y = y.to(device).long()
    flags: dict[str, str] = {}
    with frozen(clf.module):
        with torch.inference_mode():
            first = clf.logits(x)
            second = clf.logits(x)
        if not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
            flags["randomized_outputs"] = (
                "two forward passes on the same inputs differ: the model is randomised; "
                "use an attack with expectation over transformation before trusting the numbers"
            )
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(clf.logits(xg), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg)
    zero = (grad.flatten(1).abs().amax(dim=1) == 0).float().mean().item()
    if zero > 0:
        flags["zero_gradients"] = (
            f"{zero:.1%} of the inputs have an all-zero input gradient: gradient attacks cannot move them, "
            "so robust accuracy may be overstated (gradient masking)"
        )
    return flags


@dataclass(frozen=True)
class CertificationSummary:
    """What randomized-smoothing certificates say about labelled inputs (:func:`summarize_certificates`).

    Attributes:
        certified_accuracy: (radius, estimate) per requested L2 radius, in the order asked: the share
            of inputs classified correctly *and* certified at that radius or more (exact 95%
            Clopper-Pearson interval).
        abstain_rate: share of inputs the smoothed classifier abstained on (exact interval).
        mean_certified_radius: mean over inputs of the certified radius, counting 0 for a wrong or
            abstained prediction (percentile-bootstrap interval over inputs), the "average certified
            radius" of Zhai et al. ("MACER", ICLR 2020).
    """

    certified_accuracy: tuple[tuple[float, Estimate], ...]
    abstain_rate: Estimate
    mean_certified_radius: Estimate


def summarize_certificates(
    cert: Certificate, y: torch.Tensor, radii: Sequence[float], *, n_boot: int = 1000, seed: int = 0
) -> CertificationSummary:
    """Certified accuracy at each radius, abstention rate and mean certified radius.

    Args:
        cert: certificates of N inputs (Cohen et al., "Certified Adversarial Robustness via
            Randomized Smoothing", ICML 2019), e.g. from ``SmoothedClassifier.certify``.
        y: (N,) labels.
        radii: L2 radii (pixel units) for the certified accuracy.
        n_boot, seed: the mean radius's bootstrap.
    """
    if cert.prediction.shape != y.shape:
        raise InputError(f"certificates of {tuple(cert.prediction.shape)} inputs but labels of {tuple(y.shape)}")
    y = y.cpu()
    accuracy = tuple((float(r), proportion(cert.certified_accuracy(y, float(r)).cpu())) for r in radii)
    abstain = proportion((cert.prediction == ABSTAIN).cpu())
    radius = cert.radius.cpu()
    correct_radius = torch.where(cert.prediction.cpu() == y, radius, torch.zeros_like(radius))
    mean = bootstrap_mean(correct_radius, n_boot=n_boot, seed=seed, name="radius")
    return CertificationSummary(accuracy, abstain, mean)
