"""ODIN (Liang et al., "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus a small input pre-processing step."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, Param, check_images, frozen
from mlsafety.monitoring.ood.base import IMAGE, Detector, register


@register("odin", tags=(IMAGE,))
class ODIN(Detector):
    """Anomaly score ``-max softmax(f(x') / T)`` with ``x' = clip(x + eps * sign(grad_x log S_max(x)))``.

    The step raises the temperature-scaled top softmax score, which helps in-distribution inputs
    more than OOD ones. ``eps`` is in [0, 1] pixel units (the model owns its normalisation), and
    ``x'`` is clipped to [0, 1]. Needs one gradient with respect to the input per batch.

    Args:
        temperature: ``T`` (paper default).
        noise: ``eps``, the step size (0 turns the pre-processing off).
    """

    needs = frozenset({"logits", "input-grad"})

    temperature = Param(1000.0, float, low=0, low_open=True, doc="temperature T of the softmax")
    noise = Param(0.0014, float, low=0, doc="input step eps in pixel units (0: no pre-processing)")

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        check_images(x)
        device = clf.device
        out = []
        with frozen(clf.module):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                if self.noise > 0:
                    with torch.enable_grad():
                        xg = xb.detach().clone().requires_grad_(True)
                        logp = (clf.logits(xg) / self.temperature).log_softmax(dim=1)
                        logp.amax(dim=1).sum().backward()
                        grad = xg.grad
                    assert grad is not None
                    xb = (xb + self.noise * grad.sign()).clamp(0, 1)
                with torch.inference_mode():
                    p = (clf.logits(xb) / self.temperature).softmax(dim=1)
                out.append(-p.amax(dim=1))
        return torch.cat(out)
