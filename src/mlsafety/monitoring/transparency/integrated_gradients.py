"""Integrated gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", 2017).

``IG_i(x) = (x_i - b_i) * integral_0^1 dF(b + a (x - b)) / dx_i da``, approximated by a quadrature
rule. By completeness the attributions sum to ``F(x) - F(b)``; the gap left by the quadrature is the
*convergence delta* (:meth:`IntegratedGradients.attribute_with_delta`), the number to watch when
choosing ``steps``.

On text the path runs in the space of the token embeddings (N, L, D), from a baseline sentence in
which every real token is replaced by the ``[PAD]`` token's embedding (``text_baseline="pad"``) or
by zeros (``"zero"``), while special tokens (``[CLS]``, ``[SEP]``, ...) stay as they are and the
attention mask is kept; a token's score sums its D attributions, so completeness holds per sentence.
"""

from __future__ import annotations

import numpy as np
import torch

from mlsafety.core import Classifier, InputError, ModelLike, Param, TextBatch, as_classifier, frozen
from mlsafety.monitoring.transparency.base import (
    IMAGE,
    TEXT,
    Attribution,
    InputSpace,
    Target,
    TextLike,
    input_gradient,
    is_text,
    reduce_tokens,
    register,
    resolve_target,
    target_logit,
)
from mlsafety.monitoring.transparency.words import special_mask

TEXT_BASELINES = ("pad", "zero")
METHODS = ("gausslegendre", "riemann-left", "riemann-right", "riemann-middle", "riemann-trapezoid")


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``a_k`` in [0, 1] and weights ``w_k`` (float64) of the quadrature rule ``method``.

    ``gausslegendre`` and the ``riemann-left`` / ``-right`` / ``-middle`` rules place their points and
    weights as Captum does. ``riemann-trapezoid`` is the textbook composite trapezoid rule on ``steps``
    equally spaced points including both ends: weights ``1 / (steps - 1)``, halved at the two ends,
    summing to 1 (exact for linear integrands). It is *not* Captum's: Captum's ``riemann_trapezoid``
    weighs the same points by ``1 / steps`` with halved ends, which sum to ``(steps - 1) / steps``
    (49/50 at 50 steps), so Captum's trapezoid attributions are ours times ``(steps - 1) / steps``.
    Every rule's weights here sum to 1, so completeness holds up to the quadrature error alone.
    """
    if steps < 1 or (method == "riemann-trapezoid" and steps < 2):
        raise InputError(f"integrated gradients needs at least {2 if method == 'riemann-trapezoid' else 1} steps")
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    if method == "riemann-trapezoid":
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        w = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return alphas, w
    offsets = {
        "riemann-left": (0.0, 1 - 1 / n),
        "riemann-right": (1 / n, 1.0),
        "riemann-middle": (0.5 / n, 1 - 0.5 / n),
    }
    if method not in offsets:
        raise InputError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}")
    lo, hi = offsets[method]
    return torch.linspace(lo, hi, n, dtype=torch.float64), torch.full((n,), 1 / n, dtype=torch.float64)


@register("integrated-gradients", tags=(IMAGE, TEXT))
class IntegratedGradients(Attribution):
    """Integrated gradients of the target logit along the straight path from a baseline.

    Args:
        steps: quadrature points on the path.
        method: ``gausslegendre`` or ``riemann-left``/``-right``/``-middle``/``-trapezoid``.
        baseline: the reference input: a number (every feature), or a tensor broadcastable to the
            inputs (one per input or one for all). Images and features only.
        text_baseline: on text, what replaces each real token's embedding in the baseline: the
            ``pad`` token's embedding or ``zero``; special tokens and the attention mask are kept.
        batch_size: path points per backward pass (bounds memory for large inputs or many steps).
    """

    steps = Param(50, int, low=1, doc="quadrature points on the path")
    method = Param("gausslegendre", str, choices=METHODS, doc="quadrature rule")
    baseline: Param[float | torch.Tensor] = Param(0.0, None, doc="reference input: a number or a broadcastable tensor")
    text_baseline = Param("pad", str, choices=TEXT_BASELINES, doc="on text: the [PAD] embedding or zero")
    batch_size = Param(256, int, low=1, store=False, doc="path points per backward pass")

    def __post_init__(self) -> None:
        quadrature(self.method, self.steps)  # the trapezoid rule needs two points

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        b = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(b, x.shape).clone() if b.ndim < x.ndim else b.expand(x.shape).clone()
        except RuntimeError:
            raise InputError(f"baseline of shape {tuple(b.shape)} does not fit inputs {tuple(x.shape)}") from None

    def text_baseline_embeddings(self, clf: Classifier, batch: TextBatch, emb: torch.Tensor) -> torch.Tensor:
        """The baseline sentence's embeddings (N, L, D) for a batch whose embeddings are ``emb``."""
        keep = special_mask(clf.tokenizer, batch.input_ids) | ~batch.attention_mask.bool()
        if self.text_baseline == "zero":
            fill = torch.zeros_like(emb)
        else:
            pad = getattr(clf.tokenizer, "pad_token_id", None)
            if pad is None:
                raise InputError("the tokenizer has no pad token; use integrated gradients with text_baseline='zero'")
            fill = clf.embeddings(TextBatch(torch.full_like(batch.input_ids, int(pad)), batch.attention_mask,
                                            batch.truncated)).detach()  # fmt: skip
        return torch.where(keep[..., None], emb, fill)

    def _attribute_text(self, clf: Classifier, batch: TextBatch, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            emb = clf.embeddings(batch).detach().clone()
            base = self.text_baseline_embeddings(clf, batch, emb)
        attr = self._integrate(InputSpace(clf, batch.attention_mask), emb, base, target)
        return reduce_tokens(attr, self.token_reduction)

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._integrate(space, x, self._baseline(x), target)

    def _integrate(self, space: InputSpace, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alphas, weights = quadrature(self.method, self.steps)
        alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
        n, m = x.shape[0], self.steps
        diff = x - base
        acc = torch.zeros_like(x)
        view = (-1,) + (1,) * (x.ndim - 1)
        for start in range(0, n * m, self.batch_size):
            flat = torch.arange(start, min(start + self.batch_size, n * m), device=x.device)
            owner, k = flat // m, flat % m
            points = base[owner] + alphas[k].view(view) * diff[owner]
            grad = input_gradient(space, points, target[owner], owner)
            acc.index_add_(0, owner, grad * weights[k].view(view))
        return diff * acc

    def attribute_with_delta(
        self, model: ModelLike, x: torch.Tensor | TextLike, target: Target
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attributions and the convergence delta (N,): ``sum(attributions) - (F(x) - F(baseline))``.

        On text the attributions are token scores (N, L) and the baseline the one described in
        ``text_baseline``.
        """
        attr = self.attribute(model, x, target)
        clf = as_classifier(model)
        device = clf.device
        if is_text(x):
            batch = (x if isinstance(x, TextBatch) else clf.encode(x)).to(device)  # type: ignore[arg-type]
            tgt = resolve_target(target, len(batch), device)
            with frozen(clf.module), torch.inference_mode():
                emb = clf.embeddings(batch)
                base = self.text_baseline_embeddings(clf, batch, emb)
                space = InputSpace(clf, batch.attention_mask)
                gap = target_logit(space, emb, tgt) - target_logit(space, base, tgt)
            return attr, attr.sum(dim=1) - gap.cpu()
        assert isinstance(x, torch.Tensor)  # attribute() refused anything else
        xd = x.detach().to(device)
        tgt = resolve_target(target, x.shape[0], device)
        with frozen(clf.module), torch.inference_mode():
            gap = target_logit(clf, xd, tgt) - target_logit(clf, self._baseline(xd), tgt)
        delta = attr.to(device).flatten(1).sum(dim=1) - gap
        return attr, delta.to(x.device)
