"""Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model
Uncertainty in Deep Learning", ICML 2016)."""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Param, check_images, draw_seed, frozen, generator
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_DROPOUT, Detector, register
from mlsafety.monitoring.ood.deep_ensemble import STATISTICS, predictive_uncertainty

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``module`` (those MC dropout switches on); empty when it has none."""
    return [m for m in module.modules() if isinstance(m, _DROPOUT)]


@register("mc-dropout", tags=(NEEDS_DROPOUT, IMAGE))
class MCDropout(Detector):
    """Anomaly score = predictive entropy or mutual information over ``samples`` forward passes
    with dropout active (every other layer, e.g. batch norm, stays in eval mode).

    Dropout draws from PyTorch's global generator, so the passes run under a forked RNG seeded
    from ``seed``: the same seed gives the same scores, and the caller's RNG state is kept.

    Args:
        samples: stochastic forward passes.
        statistic: ``"entropy"`` or ``"mutual-information"``.
        seed: seed of the dropout masks.
    """

    needs = frozenset({"multi-pass"})

    samples = Param(10, int, low=1, doc="stochastic forward passes")
    statistic = Param("mutual-information", str, choices=STATISTICS, doc="entropy or mutual-information")
    seed = Param(0, int, doc="seed of the dropout masks")

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        check_images(x)
        dropouts = dropout_layers(clf.module)
        if not dropouts:
            raise InputError("mc-dropout needs a model with dropout layers; this one has none")
        device = clf.device
        devices = [device] if device.type == "cuda" else []
        seed = draw_seed(generator(self.seed, "mc-dropout"))
        probs = []
        with frozen(clf.module), torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for m in dropouts:
                m.train()
            for _ in range(self.samples):
                chunks = [
                    clf.logits(x[s : s + batch_size].to(device)).softmax(dim=1)
                    for s in range(0, x.shape[0], batch_size)
                ]
                probs.append(torch.cat(chunks))
        return predictive_uncertainty(torch.stack(probs), self.statistic)
