"""Shared machinery of attribution methods: the base class, the registry and the factory.

Every method answers "which input features drove the score of class ``target``?" with a map the
shape of the input. A method file subclasses :class:`Attribution` and writes :meth:`_attribute`;
the base class does the chores: wrapping the model, checking inputs, resolving targets, eval mode
with parameter gradients off (restored afterwards, also on error) and never touching ``x`` in place.

The same method object explains images and text. Text (a :class:`~mlsafety.core.Texts`, a list of
``str`` or a :class:`~mlsafety.core.TextBatch`) is encoded by the classifier's tokenizer; gradient
methods then run their unchanged math in the space of the token *embeddings* (N, L, D) through an
:class:`InputSpace` that maps embeddings to logits with the batch's attention mask, and each token's
D values are reduced to one score (:attr:`Attribution.token_reduction`). Entries carry the modality
tags ``image`` / ``text`` (:data:`IMAGE`, :data:`TEXT`) they support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from mlsafety.core import (
    Classifier,
    HyperParams,
    InputError,
    ModelLike,
    Registry,
    TextBatch,
    Texts,
    as_classifier,
    frozen,
)

Target = int | torch.Tensor
"""A class index for every input, or one per input (N,)."""

TextLike = Texts | TextBatch | Sequence[str]
"""Text inputs an attribution method takes: texts, a list of ``str``, or an encoded batch."""

IMAGE = "image"
TEXT = "text"
"""Modality tags of the registry: what inputs an entry explains."""

REDUCTIONS = ("norm", "sum")
"""How a token's D embedding attributions become one score: L2 norm, or sum (additive methods)."""


def is_text(x: object) -> bool:
    """True for text inputs (:class:`~mlsafety.core.Texts`, :class:`~mlsafety.core.TextBatch`, a list of str)."""
    if isinstance(x, Texts | TextBatch):
        return True
    return isinstance(x, list | tuple) and len(x) > 0 and all(isinstance(s, str) for s in x)


class InputSpace:
    """What a method differentiates: inputs of the space to logits, row by row of the original batch.

    For images the space is the input itself and ``rows`` is ignored. For text it is the token
    embeddings: ``logits(emb, rows)`` runs the classifier on embeddings ``emb`` (M, L, D) with the
    attention mask of the original inputs ``rows`` (M,), so a method may evaluate any number of
    copies (IG's path points, SmoothGrad's noisy copies) of any input.

    Args:
        clf: the classifier.
        mask: the attention mask (N, L) of the encoded text batch; None for images.
    """

    def __init__(self, clf: Classifier, mask: torch.Tensor | None = None) -> None:
        self.clf = clf
        self.mask = mask

    @property
    def is_text(self) -> bool:
        return self.mask is not None

    def logits(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (M, K) of inputs ``x`` (M, ...) that are copies of the original inputs ``rows``."""
        if self.mask is None:
            return self.clf.logits(x)
        mask = self.mask if rows is None else self.mask[rows]
        return self.clf.logits_from_embeddings(x, mask)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The value range ``max - min`` of each input (N,), the unit of SmoothGrad's noise level
        (Smilkov et al. 2017: ``sigma / (x_max - x_min)``; their code takes the range of the image at
        hand): over all of an image's or feature vector's values, or over the real tokens' embedding
        values of a text, so a noise level means the same on both and whatever the input's scaling."""
        if self.mask is None:
            flat = x.flatten(1)
            return (flat.amax(dim=1) - flat.amin(dim=1)).clamp_min(1e-12)
        real = self.mask.bool()[..., None].expand_as(x)
        hi = torch.where(real, x, torch.full_like(x, -torch.inf)).flatten(1).amax(dim=1)
        lo = torch.where(real, x, torch.full_like(x, torch.inf)).flatten(1).amin(dim=1)
        return (hi - lo).clamp_min(1e-12)


class Attribution(HyperParams):
    """Base class: constructor stores hyper-parameters, :meth:`attribute` computes maps.

    Subclasses declare their hyper-parameters as :class:`~mlsafety.core.Param` class attributes
    (the constructor, its validation, ``repr`` and ``get_params`` follow from the declaration),
    set ``needs_grad`` (False for perturbation methods) and implement
    :meth:`_attribute(space, x, target) <_attribute>` where ``x`` is already on the model's device,
    ``target`` is an int64 tensor (N,) and ``space`` an :class:`InputSpace` (call
    ``space.logits(x, rows)``, or :func:`input_gradient` / :func:`target_logit`). Methods whose
    math does not carry over to embeddings override :meth:`_attribute_text`.
    """

    name: ClassVar[str]
    needs_grad: ClassVar[bool] = True
    token_reduction: ClassVar[str] = "sum"
    """How embedding attributions (N, L, D) become token scores (N, L): ``norm`` or ``sum``."""

    def attribute(self, model: ModelLike, x: torch.Tensor | TextLike, target: Target, **params: Any) -> torch.Tensor:
        """Attribution maps for ``target``.

        Args:
            model: the classifier (inputs to logits); left unchanged. For text it needs a tokenizer
                (``Classifier(module, tokenizer=...)`` or a module with ``.tokenizer``).
            x: images or features (N, ...) as a float tensor, or text (:data:`TextLike`).
            target: class index for all inputs, or one per input (N,).
            **params: hyper-parameters overriding the constructor's for this call.

        Returns:
            For a tensor: maps of the same shape, dtype and device as ``x``. For text: token scores
            (N, L) on the CPU, aligned with ``clf.encode(x)`` (the batch the classifier builds from
            the texts), zero at padding.
        """
        if params:
            unknown = sorted(set(params) - set(self.get_params()))
            if unknown:
                raise InputError(
                    f"attribution {self.name!r} has no parameter {unknown[0]!r}; it takes: "
                    f"{', '.join(sorted(self.get_params())) or 'no parameters'}"
                )
            return type(self)(**{**self.get_params(), **params}).attribute(model, x, target)
        clf = as_classifier(model)
        if is_text(x):
            return self.attribute_text(clf, x, target)  # type: ignore[arg-type]
        if isinstance(x, str):
            raise InputError("text inputs must be a list of strings (or Texts), not one str; wrap it: [text]")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"inputs must be a float tensor or texts, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise InputError(f"inputs must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
        device = clf.device
        xd = x.detach().to(device).clone()  # also turns an inference-mode tensor into a normal one
        tgt = resolve_target(target, x.shape[0], device)
        with frozen(clf.module):
            with torch.enable_grad() if self.needs_grad else torch.inference_mode():
                out = self._attribute(InputSpace(clf), xd, tgt)
        out = out.detach().to(x.device, x.dtype).reshape(x.shape)
        return out.clone() if out.is_inference() else out  # a normal tensor, usable with autograd

    def attribute_text(self, model: ModelLike, texts: TextLike, target: Target) -> torch.Tensor:
        """Token scores (N, L) for ``target`` on text, aligned with the classifier's encoding of ``texts``."""
        clf = as_classifier(model)
        if getattr(clf, "tokenizer", None) is None:
            raise InputError("explaining text needs a tokenizer: pass Classifier(model, tokenizer=...)")
        batch = texts if isinstance(texts, TextBatch) else clf.encode(texts)
        if len(batch) == 0:
            raise InputError("no texts to explain")
        device = clf.device
        batch = batch.to(device)
        tgt = resolve_target(target, len(batch), device)
        with frozen(clf.module):
            with torch.enable_grad() if self.needs_grad else torch.inference_mode():
                out = self._attribute_text(clf, batch, tgt)
        out = (out * batch.attention_mask.to(out.dtype)).detach().cpu()
        return out.clone() if out.is_inference() else out

    def _attribute_text(self, clf: Classifier, batch: TextBatch, target: torch.Tensor) -> torch.Tensor:
        """Token scores (N, L): the method's math on the token embeddings, reduced per token."""
        with torch.no_grad():
            emb = clf.embeddings(batch).detach().clone()
        return self.attribute_embeddings(InputSpace(clf, batch.attention_mask), emb, target)

    def attribute_embeddings(self, space: InputSpace, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Token scores (N, L) from attributions over embeddings ``emb`` (N, L, D) in ``space``."""
        if emb.ndim != 3:
            raise InputError(f"token embeddings must be (N, L, D), got {tuple(emb.shape)}")
        maps = self._attribute(space, emb, target)
        return reduce_tokens(maps, self.token_reduction)

    def _attribute(self, space: InputSpace, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def reduce_tokens(maps: torch.Tensor, how: str) -> torch.Tensor:
    """Embedding attributions (N, L, D) as token scores (N, L): L2 ``norm`` or ``sum`` over D."""
    if how not in REDUCTIONS:
        raise InputError(f"unknown token reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")
    return maps.norm(dim=-1) if how == "norm" else maps.sum(dim=-1)


def resolve_target(target: Target, n: int, device: torch.device) -> torch.Tensor:
    """``target`` as an int64 tensor (N,) on ``device``."""
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point():
        raise InputError("target must hold integer class indices")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise InputError(f"target must be one class index or one per input ({n}), got shape {tuple(t.shape)}")
    return t.clone()


def _space(f: InputSpace | Classifier) -> InputSpace:
    return f if isinstance(f, InputSpace) else InputSpace(f)


def target_logit(
    f: InputSpace | Classifier, x: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The logit of class ``target[i]`` for each input (M,); ``rows`` names the original input of each copy."""
    return _space(f).logits(x, rows).gather(1, target[:, None])[:, 0]


def input_gradient(
    f: InputSpace | Classifier, x: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient of each input's target logit with respect to that input (inputs are independent)."""
    xg = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(target_logit(f, xg, target, rows).sum(), xg)
    return grad


ATTRIBUTIONS: Registry[Attribution] = Registry("attribution")
register = ATTRIBUTIONS.register


def create(name: str, **params: Any) -> Attribution:
    """The attribution method registered as ``name`` with hyper-parameters ``params``."""
    return ATTRIBUTIONS.create(name, **params)


def available(modality: str | None = None) -> list[str]:
    """Names of the registered attribution methods (those tagged ``modality`` when given)."""
    return ATTRIBUTIONS.tagged(modality) if modality is not None else ATTRIBUTIONS.available()


def attribute(name: str, model: ModelLike, x: torch.Tensor | TextLike, target: Target, **params: Any) -> torch.Tensor:
    """One call: ``create(name, **params).attribute(model, x, target)``."""
    return create(name, **params).attribute(model, x, target)
