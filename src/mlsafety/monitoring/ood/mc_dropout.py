"""Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model
Uncertainty in Deep Learning", ICML 2016)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlsafety.core import Classifier, InputError, Param, check_images, frozen, generator, seeded_global
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_DROPOUT, Detector, register
from mlsafety.monitoring.ood.deep_ensemble import STATISTICS, predictive_uncertainty

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``module`` (those MC dropout switches on); empty when it has none."""
    return [m for m in module.modules() if isinstance(m, _DROPOUT)]


def _cpu_mask_forward(layer: nn.Dropout) -> Callable[[torch.Tensor], torch.Tensor]:
    """``layer``'s training-mode forward with its mask drawn by the CPU's generator wherever the input lives.

    PyTorch's CPU dropout draws ``empty_like(x).bernoulli_(1 - p)``, divides by ``1 - p`` and multiplies; this does
    the same on the CPU and moves the mask to the input's device, so a model on a GPU gets the masks the CPU run
    gets from the same seed (a GPU's own generator gives other masks: the scores then agree only within Monte Carlo
    error). On the CPU it equals ``layer``'s own forward bit for bit.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        p = float(layer.p)
        if p == 0.0 or x.numel() == 0:
            return x
        if p == 1.0:
            return x.mul_(0.0) if layer.inplace else x * torch.zeros((), dtype=x.dtype, device=x.device)
        noise = torch.empty_like(x, device="cpu").bernoulli_(1 - p).div_(1 - p).to(x.device)  # x's memory layout
        return x.mul_(noise) if layer.inplace else x * noise

    return forward


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
        probs = []
        # off the CPU, plain dropout layers draw their masks on the CPU: the scores are the CPU's (other dropout
        # kinds keep the device's generator)
        swapped = [m for m in dropouts if type(m) is nn.Dropout] if device.type != "cpu" else []
        with frozen(clf.module), torch.inference_mode(), seeded_global(generator(self.seed, "mc-dropout"), [device]):
            for m in dropouts:
                m.train()
            for m in swapped:
                m.forward = _cpu_mask_forward(m)  # type: ignore[method-assign,assignment]
            try:
                for _ in range(self.samples):
                    chunks = [
                        clf.logits(x[s : s + batch_size].to(device)).softmax(dim=1)
                        for s in range(0, x.shape[0], batch_size)
                    ]
                    probs.append(torch.cat(chunks))
            finally:
                for m in swapped:
                    del m.forward  # the class's forward again
        return predictive_uncertainty(torch.stack(probs), self.statistic)
