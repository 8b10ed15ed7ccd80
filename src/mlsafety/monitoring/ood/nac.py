"""Neuron Activation Coverage (Liu, Tian, Li, Ma & Wang, "Neuron Activation Coverage: Rethinking
Out-of-distribution Detection and Generalization", ICLR 2024): the NAC-UE detector."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, ModelLike, Param, as_classifier, check_images, frozen, tap_layers
from mlsafety.monitoring.ood.base import IMAGE, OPT_IN, Detector, layers_problem, register, resolve_layers


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """``KL(u || softmax(logits))`` per input (N,): ``sum_k (1/K) (log(1/K) - log p_k)``."""
    k = logits.shape[1]
    return -torch.log(torch.tensor(float(k), dtype=logits.dtype)) - logits.log_softmax(dim=1).mean(dim=1)


@register("nac", tags=(IMAGE, OPT_IN))
class NAC(Detector):
    """Anomaly score ``-(1/L) sum_l (1/C_l) sum_i NAC_l,i(s_l,i(x))``: minus the mean neuron activation
    coverage of the input's neuron states.

    A neuron's state is ``s = sigmoid(beta * z * dKL(u || p)/dz)``: its output ``z`` times the gradient of the
    KL divergence from the uniform distribution to the softmax, squashed. For a convolutional layer the
    product ``z * dKL/dz`` is averaged over space (one state per channel). Fitting histograms every
    neuron's states over the in-distribution inputs into ``bins`` equal bins of [0, 1]; the coverage of a
    bin is ``min(count / O, 1)`` with ``O = max(1, o_share * N)`` (the paper's lower bound ``r`` on the
    density, as a share of the ``N`` fitting inputs). As in the paper, only fitting inputs the model
    classifies correctly build the histograms (all of them when the data has no labels or none is right).
    One backward pass per batch gives every layer's gradients at once.

    Deviations: one ``beta`` and ``bins`` for every layer (the paper tunes them per layer on validation
    data); the layers are :func:`~mlsafety.core.block_layers` (the paper uses ResNet's ``layer1..layer4``)
    unless ``layers`` names them; ``O`` is a share of the data rather than a count. The authors' code pools a
    map's output and its gradient separately (sums over space) and multiplies the two; here the product is
    averaged, ``mean(z * dKL/dz)``, which for a map followed by global average pooling is theirs divided by
    ``(H W)^2`` (a ``beta`` of theirs is ``beta (H W)^2`` here). Their bins are log-spaced, denser near 0 and 1;
    these are equal.

    Args:
        beta: sigmoid steepness (the gradients of a trained model are small, hence the large default).
        bins: histogram bins ``M`` over [0, 1].
        o_share: the share of fitting inputs a bin needs for full coverage.
        layers: module names of the layers; None: the model's block outputs.
    """

    needs = frozenset({"logits", "layers", "grad"})
    requires_fit = True

    beta = Param(100.0, float, low=0, low_open=True, doc="sigmoid steepness of the neuron state")
    bins = Param(50, int, low=2, doc="histogram bins M over [0, 1]")
    o_share = Param(0.01, float, low=0, high=1, doc="share of fitting inputs giving a bin full coverage")
    layers: Param[tuple[str, ...] | None] = Param(None, tuple, doc="layer module names; None: block outputs")
    chunk = Param(128, int, low=1, store=False, doc="inputs per backward pass")

    def unusable(self, model: ModelLike, probe: torch.Tensor) -> str | None:
        return layers_problem(as_classifier(model), self.layers, self.name)

    def _names(self, clf: Classifier) -> list[str]:
        return getattr(self, "layers_", None) or resolve_layers(clf, self.layers, self.name)

    def states(
        self, clf: Classifier, x: torch.Tensor, batch_size: int = 256
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Neuron states ``(N, C_l)`` of every layer, and the logits ``(N, K)``."""
        check_images(x)
        names = self._names(clf)
        device = clf.device
        per: list[list[torch.Tensor]] = [[] for _ in names]
        logits_all = []
        with frozen(clf.module), tap_layers(clf.module, {n: (n, lambda t: t) for n in names}) as tap:
            for start in range(0, x.shape[0], min(batch_size, self.chunk)):
                xb = x[start : start + min(batch_size, self.chunk)].to(device)
                with torch.enable_grad():
                    xg = xb.detach().clone().requires_grad_(True)  # so that every layer's output is in the graph
                    logits = clf.logits(xg)
                    acts = tap.take(xb.shape[0])
                    zs = [acts[n] for n in names]
                    grads = torch.autograd.grad(kl_to_uniform(logits).sum(), zs, allow_unused=True)
                for i, (z, g) in enumerate(zip(zs, grads, strict=True)):
                    if g is None:
                        raise InputError(f"nac: layer {names[i]!r} does not lead to the logits; choose another layer")
                    prod = (z.detach() * g).double()
                    prod = prod.mean(dim=tuple(range(2, prod.ndim))) if prod.ndim > 2 else prod
                    per[i].append(torch.sigmoid(self.beta * prod))
                logits_all.append(logits.detach())
        return [torch.cat(p) for p in per], torch.cat(logits_all)

    def _bin(self, s: torch.Tensor) -> torch.Tensor:
        return (s * self.bins).long().clamp(0, self.bins - 1)

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if clf.head_info is None:  # default layers leave out the head: find it first
            clf.trace(x[:4].to(clf.device))
        self.layers_ = self._names(clf)
        states, logits = self.states(clf, x)
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=logits.device)
        if y is not None:
            right = (logits.argmax(dim=1) == y.to(logits.device)) & (y.to(logits.device) >= 0)
            if right.any():
                keep = right
        n = int(keep.sum())
        o = max(1.0, self.o_share * n)
        self.coverage_ = []
        for s in states:
            b = self._bin(s[keep])  # (n, C)
            counts = torch.zeros(s.shape[1], self.bins, dtype=torch.float64, device=s.device)
            counts.scatter_add_(1, b.T.contiguous(), torch.ones_like(b.T, dtype=torch.float64))
            self.coverage_.append((counts / o).clamp(max=1.0))

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        states, _ = self.states(clf, x, batch_size)
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=states[0].device)
        for s, cov in zip(states, self.coverage_, strict=True):
            b = self._bin(s)  # (N, C)
            total = total + cov.gather(1, b.T.contiguous()).T.mean(dim=1)
        return -total / len(states)
