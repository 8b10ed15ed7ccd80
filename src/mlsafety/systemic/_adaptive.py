"""Adaptive attack on a protected system: fool the model *and* stay under the monitor's thresholds.

A monitor evaluated only on attacks that ignore it overstates protection (Carlini & Wagner,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods", 2017; Tramer et al.,
"On Adaptive Attacks to Adversarial Example Defenses", 2020). The attacker here knows the model,
the detector and both thresholds. :class:`MonitorAwareObjective` gives the two hooks a gradient
attack needs (``loss`` to maximise, ``success`` to stop), in the ``(logits, y, x)`` form of
:mod:`mlsafety.robustness.attacks` (PGD, APGD), so the attack's own machinery (random start,
projection, first successful iterate) does the rest::

    obj = MonitorAwareObjective(model, monitor, score_fn)
    x_adv = PGD(eps=0.1, steps=50, loss=obj.loss, success=obj.success)(model, x, y)

The loss is *selective* (Bryniarski et al., "Evading Adversarial Example Detection Defenses with
Orthogonal Projected Gradient Descent", 2022): while an input is still classified correctly it is the
margin ``max_{j != y} z_j - z_y`` (at most 0), which the attack climbs; once the input is
misclassified it is ``1 / (1 + v)`` with ``v`` the monitor's violation (:meth:`Monitor.violation`,
positive while flagged), which the attack climbs by pushing the detector score down and the
confidence up. The two branches are ordered (correct <= 0 < flagged-wrong < 1), so "highest loss"
also ranks iterates sensibly. Success means misclassified and not flagged.

Threat model: white box (model, detector, thresholds), the attack's own eps-ball and [0, 1] box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlsafety.core import ModelLike, Outputs, as_classifier
from mlsafety.systemic._monitor import Monitor
from mlsafety.systemic._select import ScoreFn


def wrong_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` (N,): positive exactly when the input is misclassified."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return other - true


@dataclass(frozen=True)
class MonitorAwareObjective:
    """Loss and success hooks for an attack on a classifier guarded by a monitor.

    Args:
        model: the classifier (``nn.Module`` or :class:`~mlsafety.core.Classifier`).
        monitor: the fitted monitor.
        score_fn: the detector's *differentiable* score from forward outputs (None when the monitor
            uses confidence only).
        needs_features: the detector reads penultimate features; the hooks then run their own
            forward pass on ``x`` to get them (the attack's logits carry no features).
    """

    model: ModelLike
    monitor: Monitor
    score_fn: ScoreFn | None = None
    needs_features: bool = False

    def _violation(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = None
        if self.needs_features:
            feats, logits = as_classifier(self.model).features_and_logits(x)
        scores = self.score_fn(Outputs(logits, feats)) if self.score_fn is not None else None
        conf = logits.softmax(dim=1).amax(dim=1)
        return logits, self.monitor.violation(scores, conf).to(logits.dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) selective loss to maximise (see the module docs); differentiable in ``x``."""
        logits, v = self._violation(logits, x)
        m = wrong_margin(logits, y)
        return torch.where(m > 0, (1.0 + v.clamp_min(0)).reciprocal(), m.clamp_max(0))

    def success(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: misclassified and not flagged by the monitor."""
        with torch.no_grad():
            logits, v = self._violation(logits, x)
            return (logits.argmax(dim=1) != y) & (v <= 0)
