"""Robust accuracy of a model under an attack, with exact intervals and sanity flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import Classifier, DataLike, InputError, Progress, as_classifier, frozen, iter_batches, track
from mlsafety.metrics import Estimate, proportion
from mlsafety.robustness.attacks.base import Attack, lp_norm


@dataclass
class RobustnessResult:
    """What :func:`evaluate` measured.

    Attributes:
        clean_accuracy: accuracy on the unperturbed inputs (exact 95% interval).
        robust_accuracy: share of inputs classified correctly both clean and under attack (exact
            95% Clopper-Pearson interval): the attack is only run on correctly classified points,
            as in AutoAttack, and a clean error counts as non-robust.
        attack_success_rate: share of the correctly classified inputs the attack broke.
        median_perturbation_norm: median of the attack's norm of ``x_adv - x`` over the broken
            points (NaN when none broke).
        norm: the norm of ``median_perturbation_norm``.
        warnings: sanity flags (name -> explanation), see :func:`sanity_flags`.
        broken_by: for ensembles, points broken by each member.
        x_adv: the adversarial inputs (on the inputs' device), for plots.
        pred_adv: predictions on ``x_adv``.
    """

    clean_accuracy: Estimate
    robust_accuracy: Estimate
    attack_success_rate: Estimate
    median_perturbation_norm: float
    norm: str
    warnings: dict[str, str] = field(default_factory=dict)
    broken_by: dict[str, int] = field(default_factory=dict)
    x_adv: torch.Tensor | None = None
    pred_adv: torch.Tensor | None = None


def evaluate(
    model: nn.Module | Classifier,
    data: DataLike,
    attack: Attack,
    batch_size: int = 512,
    keep_adversarials: bool = False,
    progress: Progress | None = None,
    generator: torch.Generator | None = None,
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
            norms.append(lp_norm((x_adv[b] - xb[b]).float(), attack.norm).cpu())
        if keep_adversarials:
            advs.append(x_adv)
            preds.append(pred)
    if not correct_clean:
        raise InputError("no data to evaluate: give at least one labelled input")
    clean = torch.cat(correct_clean)
    robust = torch.cat(correct_adv)
    n_ok = int(clean.sum())
    asr = proportion(int(n_ok - robust.sum()), n_ok) if n_ok else Estimate(float("nan"), 0.0, 1.0, 0)
    med = float(torch.cat(norms).median()) if norms else float("nan")
    return RobustnessResult(
        clean_accuracy=proportion(clean),
        robust_accuracy=proportion(robust),
        attack_success_rate=asr,
        median_perturbation_norm=med,
        norm=attack.norm,
        warnings=warnings,
        broken_by=broken_by,
        x_adv=torch.cat(advs) if keep_adversarials else None,
        pred_adv=torch.cat(preds) if keep_adversarials else None,
    )


def sanity_flags(model: nn.Module | Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
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
