"""AdaSCALE (Regmi, "AdaSCALE: Adaptive Scaling for OOD Detection", 2025): SCALE (activations, AdaSCALE-A) or
logit scaling (LTS, logits, AdaSCALE-L) with a percentile chosen per input from how much its top activations move
under a small input perturbation."""

from __future__ import annotations

import torch

from mlsafety.core import Classifier, InputError, Param, check_images, frozen
from mlsafety.monitoring.ood.base import IMAGE, NEEDS_HEAD_WEIGHTS, OPT_IN, Detector, energy_of, head_of, register


def keep_counts(d: int, percentiles: torch.Tensor) -> torch.Tensor:
    """Per row, how many of ``d`` activations lie at or above its percentile: ``max(1, d - round(d p / 100))``
    (SCALE's count, :func:`~mlsafety.monitoring.ood.ash.keep_count`, for a tensor of percentiles)."""
    return (d - torch.round(d * percentiles.double() / 100.0)).long().clamp(1, d)


def adaptive_ratio(features: torch.Tensor, percentiles: torch.Tensor) -> torch.Tensor:
    """``s1 / s2`` (N,) with a percentile per row: ``s1`` the sum of the rectified activations, ``s2`` the sum of
    the row's top ``keep_counts`` of them. SCALE's factor is ``exp(s1 / s2)``, LTS's ``(s1 / s2)^2``."""
    f = features.double().clamp_min(0)
    top = torch.sort(f, dim=1, descending=True).values.cumsum(dim=1)
    k = keep_counts(f.shape[1], percentiles.to(f.device))
    s2 = top.gather(1, (k - 1)[:, None])[:, 0]
    return f.sum(dim=1) / s2.clamp_min(1e-12)


class _AdaSCALE(Detector):
    """Shared machinery of the two variants (one adaptive percentile, two places for its scale).

    Per input ``x``: the gradient of the predicted class's logit with respect to ``x``; the share
    ``o`` of input elements with the smallest absolute gradient moved by ``step * sign(grad)`` (pixel
    units; not clipped to [0, 1]: the perturbed input only probes the model); the features ``f`` of
    ``x`` and ``f'`` of the perturbed input. ``Q = sum |f - f'|`` over the top ``k2`` % of ``f``'s
    activations, ``C_o = sum relu(f')`` over the top ``k1`` %, ``Q' = lambda Q + C_o``. The percentile
    is ``p = p_min + (1 - ECDF(Q')) (p_max - p_min)``, ``ECDF`` that of ``Q'`` on the fit inputs
    (``fit_q_``, sorted), so inputs that move more (likely OOD) get a lower percentile and a weaker
    scale, made from ``s1 / s2`` at ``p`` of the rectified features (:func:`adaptive_ratio`).

    Needs an input gradient and a second forward pass per batch (``input-grad``), so it runs on its
    own, not from the shared pass, and only on image models.

    Deviations: the paper's ``step`` 0.5 is in normalised-input units; here the model owns its
    normalisation and the step is in [0, 1] pixel units (0.1 is about 0.5 normalised units for the
    usual std of 0.2-0.25). The top-``k`` counts are at least one activation (``int(D k / 100)`` is 0
    for small ``D``). The top set at percentile ``p`` is SCALE's (:func:`keep_counts` activations) rather
    than those above an interpolated quantile. The ECDF is taken over every fit input (the paper's code
    subsamples 5000).
    """

    needs = frozenset({"features", "logits", "input-grad"})
    requires_fit = True

    p_min = Param(75.0, float, low=0, high=100, high_open=True, doc="percentile of the inputs most likely OOD")
    p_max = Param(85.0, float, low=0, high=100, high_open=True, doc="percentile of the inputs most likely ID")
    k1 = Param(5.0, float, low=0, high=100, low_open=True, doc="% of top activations in the correction term C_o")
    k2 = Param(1.0, float, low=0, high=100, low_open=True, doc="% of top activations in the shift Q")
    lam = Param(10.0, float, low=0, doc="weight lambda of the shift Q in Q'")
    o = Param(0.05, float, low=0, high=1, doc="share of input elements perturbed (least sensitive first)")
    step = Param(0.1, float, low=0, doc="perturbation of each chosen element, in pixel units")

    def __post_init__(self) -> None:
        if self.p_min > self.p_max:
            raise InputError(f"{self.name} p_min must not exceed p_max, got p_min={self.p_min:g}, p_max={self.p_max:g}")

    # -- the method ----------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``x`` moved by ``step * sign(grad)`` on the share ``o`` of its elements with the smallest ``|grad|``."""
        flat = grad.reshape(grad.shape[0], -1)
        n = int(flat.shape[1] * self.o)
        mask = torch.zeros_like(flat)
        if n > 0:
            mask.scatter_(1, flat.abs().topk(n, dim=1, largest=False).indices, 1.0)
        return x + self.step * grad.sign() * mask.reshape(grad.shape)

    def shift_statistic(self, f: torch.Tensor, f_perturbed: torch.Tensor) -> torch.Tensor:
        """``Q' = lambda Q + C_o`` (N,) from clean and perturbed features (N, D)."""
        f, fp = f.double(), f_perturbed.double()
        d = f.shape[1]
        k1, k2 = max(1, int(d * self.k1 / 100)), max(1, int(d * self.k2 / 100))
        c_o = fp.clamp_min(0).gather(1, f.topk(k1, dim=1).indices).sum(dim=1)
        q = (f - fp).abs().gather(1, f.topk(k2, dim=1).indices).sum(dim=1)
        return self.lam * q + c_o

    def percentiles(self, q: torch.Tensor) -> torch.Tensor:
        """``p_min + (1 - ECDF(Q')) (p_max - p_min)`` (N,)."""
        ref = self.fit_q_.to(q.device)
        ecdf = torch.searchsorted(ref, q.contiguous(), right=True).double() / ref.numel()
        return self.p_min + (1 - ecdf) * (self.p_max - self.p_min)

    def _energy(self, clf: Classifier, f: torch.Tensor, logits: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """The energy of the scaled outputs, from ``ratio = s1 / s2`` (N,)."""
        raise NotImplementedError

    # -- passes --------------------------------------------------------------------------------
    def _passes(self, clf: Classifier, x: torch.Tensor, batch_size: int):  # type: ignore[no-untyped-def]
        """Per batch: clean features, logits and perturbed features."""
        check_images(x)
        device = clf.device
        with frozen(clf.module):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                with torch.enable_grad():
                    xg = xb.detach().clone().requires_grad_(True)
                    f, logits = clf.features_and_logits(xg)
                    logits.amax(dim=1).sum().backward()
                    grad = xg.grad
                assert grad is not None
                with torch.inference_mode():
                    fp, _ = clf.features_and_logits(self.perturb(xb, grad))
                yield f.detach(), logits.detach(), fp

    def _fit_model(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor | None) -> None:
        qs = [self.shift_statistic(f, fp) for f, _, fp in self._passes(clf, x, 256)]
        self.fit_q_ = torch.sort(torch.cat(qs)).values

    def _score_model(self, clf: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        out = []
        for f, logits, fp in self._passes(clf, x, batch_size):
            ratio = adaptive_ratio(f, self.percentiles(self.shift_statistic(f, fp)))
            out.append(self._energy(clf, f.double(), logits.double(), ratio))
        return torch.cat(out)


@register("adascale-a", tags=(IMAGE, NEEDS_HEAD_WEIGHTS, OPT_IN))
class AdaSCALEA(_AdaSCALE):
    """AdaSCALE-A: anomaly score = energy of the logits recomputed from the scaled activations,
    ``-logsumexp(W (r f) + b)`` with SCALE's ``r = exp(s1 / s2)`` (the bias unscaled). With ``p_min == p_max == p``
    it is SCALE at ``p``.
    """

    __doc__ = (__doc__ or "") + (_AdaSCALE.__doc__ or "")

    def _energy(self, clf: Classifier, f: torch.Tensor, logits: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        w, b = head_of(clf)
        return energy_of((f @ w.T.to(f)) * ratio.exp()[:, None] + b.to(f))


@register("adascale-l", tags=(IMAGE, OPT_IN))
class AdaSCALEL(_AdaSCALE):
    """AdaSCALE-L: anomaly score = energy of the scaled logits, ``-logsumexp(r l)`` with logit scaling's
    ``r = (s1 / s2)^2`` (Djurisic et al., "Logit Scaling for Out-of-Distribution Detection", 2024; the authors'
    code scales the logits by this square, not by SCALE's ``exp(s1 / s2)``); the bias is scaled too, and the logits
    are the model's own, so no head weights are needed. With ``p_min == p_max == p`` it is LTS at ``p``.
    """

    __doc__ = (__doc__ or "") + (_AdaSCALE.__doc__ or "")

    def _energy(self, clf: Classifier, f: torch.Tensor, logits: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return energy_of(logits * ratio.square()[:, None])
