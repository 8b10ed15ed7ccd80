"""Adaptive attack on a protected system: fool the model *and* stay under the monitor's thresholds.

A monitor evaluated only on attacks that ignore it overstates protection (Carlini & Wagner,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods", 2017; Tramer et al.,
"On Adaptive Attacks to Adversarial Example Defenses", 2020). The attacker here knows the model,
the detector and both thresholds. It runs projected gradient descent with the *selective* loss of
Bryniarski et al. ("Evading Adversarial Example Detection Defenses with Orthogonal Projected
Gradient Descent", 2022): while an input is still classified correctly it climbs the margin
``max_{j != y} z_j - z_y``; once it is misclassified it descends the monitor's violation
(:meth:`Monitor.violation`, score above threshold and confidence below threshold in units of their
validation spread). An input counts as a success the first time it is misclassified and not
flagged; its perturbation is then frozen.

Threat model: white box, ``eps`` in [0, 1] pixel units, L-inf or L2 ball, inputs kept in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Outputs, as_classifier, frozen, rand_like

ScoreFn = Callable[[Outputs], torch.Tensor]
"""Maps forward outputs (logits and features, with gradients) to (N,) anomaly scores, differentiably."""


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` (N,): positive exactly when the input is misclassified."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return other - true


def monitor_aware_attack(
    model: nn.Module | Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    violation: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor],
    score_fn: ScoreFn | None = None,
    eps: float = 0.1,
    norm: str = "linf",
    steps: int = 50,
    step_size: float | None = None,
    random_start: bool = True,
    needs_features: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Adversarial inputs that are misclassified and keep ``violation <= 0`` where the attack succeeds.

    Args:
        model: the classifier (gradients are taken with respect to the input only; the model is
            left unchanged).
        x: clean inputs (N, C, H, W) in [0, 1] (not modified).
        y: true labels (N,).
        violation: ``(scores, confidence) -> (N,)``, positive when the monitor flags the input
            (usually :meth:`~mlsafety.systemic.Monitor.violation`); must be differentiable.
        score_fn: the detector's differentiable score from forward outputs (None: the monitor
            uses the confidence only).
        eps: radius of the perturbation ball in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps.
        step_size: step length (default ``2.5 * eps / steps``, Madry et al. 2018).
        random_start: start from a uniform point of the L-inf ball (L2: the centre).
        needs_features: the detector reads penultimate features.
        generator: source of the random start (CPU generator; samples move to x's device).
        batch_size: inputs per batch.

    Returns:
        (N, C, H, W) tensor, same dtype and device as ``x``; for inputs where no success was found,
        the last iterate.
    """
    norm = norm.lower()
    if norm not in ("linf", "l2"):
        raise InputError(f"adaptive attack supports norms 'linf' and 'l2', not {norm!r}")
    if eps < 0 or steps < 1:
        raise InputError("adaptive attack needs eps >= 0 and at least one step")
    clf = as_classifier(model)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    out = []
    with frozen(clf.module):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].detach()
            yb = y[start : start + batch_size].to(xb.device).long()
            out.append(
                _attack_batch(
                    clf, xb, yb, violation, score_fn, eps, norm, steps, alpha, random_start, needs_features, generator
                )
            )
    return torch.cat(out) if out else x.clone()


def _attack_batch(
    clf: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    violation: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor],
    score_fn: ScoreFn | None,
    eps: float,
    norm: str,
    steps: int,
    alpha: float,
    random_start: bool,
    needs_features: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    device = clf.device
    x0 = x.to(device)
    delta = torch.zeros_like(x0)
    if random_start and norm == "linf":
        delta = (2 * rand_like(x0, generator) - 1) * eps
    adv = (x0 + delta).clamp(0, 1)
    best = adv.clone()
    done = torch.zeros(x0.shape[0], dtype=torch.bool, device=device)
    view = (-1,) + (1,) * (x0.ndim - 1)
    for it in range(steps + 1):
        adv.requires_grad_(True)
        with torch.enable_grad():
            if needs_features:
                feats, logits = clf.features_and_logits(adv)
            else:
                feats, logits = None, clf.logits(adv)
            scores = score_fn(Outputs(logits, feats)) if score_fn is not None else None
            conf = logits.softmax(dim=1).amax(dim=1)
            m = margin(logits, y)
            v = violation(scores, conf).to(m.dtype)
            success = (m > 0) & (v <= 0)
            loss = torch.where(m > 0, -v, m)
            (grad,) = torch.autograd.grad(loss.sum(), adv)
        adv = adv.detach()
        new = success & ~done
        best[new] = adv[new]
        done |= success
        if it == steps or bool(done.all()):
            break
        if norm == "linf":
            step = alpha * grad.sign()
        else:
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(view)
            step = alpha * grad / g_norm
        step = step * (~done).reshape(view).to(step.dtype)
        delta = _project(adv + step - x0, eps, norm, view)
        adv = (x0 + delta).clamp(0, 1)
    best[~done] = adv[~done]
    return best.to(x.device, x.dtype)


def _project(delta: torch.Tensor, eps: float, norm: str, view: tuple[int, ...]) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(view)
    return delta * (eps / n).clamp(max=1.0)
