"""Shared machinery of attribution methods: the base class, the registry and the factory.

Every method answers "which input features drove the score of class ``target``?" with a map the
shape of the input. A method file subclasses :class:`Attribution` and writes :meth:`_attribute`;
the base class does the chores: wrapping the model, checking inputs, resolving targets, eval mode
with parameter gradients off (restored afterwards, also on error) and never touching ``x`` in place.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mlsafety.core import Classifier, HyperParams, InputError, ModelLike, Registry, as_classifier, frozen

Target = int | torch.Tensor
"""A class index for every input, or one per input (N,)."""


class Attribution(HyperParams):
    """Base class: constructor stores hyper-parameters, :meth:`attribute` computes maps.

    Subclasses declare their hyper-parameters as :class:`~mlsafety.core.Param` class attributes
    (the constructor, its validation, ``repr`` and ``get_params`` follow from the declaration),
    set ``needs_grad`` (False for perturbation methods) and implement
    :meth:`_attribute(clf, x, target) <_attribute>` where ``x`` is already on the model's device
    and ``target`` is an int64 tensor (N,).
    """

    name: ClassVar[str]
    needs_grad: ClassVar[bool] = True

    def attribute(self, model: ModelLike, x: torch.Tensor, target: Target, **params: Any) -> torch.Tensor:
        """Attribution maps for ``target``, the same shape, dtype and device as ``x``.

        Args:
            model: the classifier (inputs to logits); left unchanged.
            x: inputs (N, ...) (images (N, C, H, W) in [0, 1], or any float features).
            target: class index for all inputs, or one per input (N,).
            **params: hyper-parameters overriding the constructor's for this call.
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
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"inputs must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise InputError(f"inputs must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
        device = clf.device
        xd = x.detach().to(device).clone()  # also turns an inference-mode tensor into a normal one
        tgt = resolve_target(target, x.shape[0], device)
        with frozen(clf.module):
            with torch.enable_grad() if self.needs_grad else torch.inference_mode():
                out = self._attribute(clf, xd, tgt)
        out = out.detach().to(x.device, x.dtype).reshape(x.shape)
        return out.clone() if out.is_inference() else out  # a normal tensor, usable with autograd

    def _attribute(self, clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


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


def target_logit(clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logit of class ``target[i]`` for each input (N,)."""
    return clf.logits(x).gather(1, target[:, None])[:, 0]


def input_gradient(clf: Classifier, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient of each input's target logit with respect to that input (inputs are independent)."""
    xg = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(target_logit(clf, xg, target).sum(), xg)
    return grad


ATTRIBUTIONS: Registry[Attribution] = Registry("attribution")
register = ATTRIBUTIONS.register


def create(name: str, **params: Any) -> Attribution:
    """The attribution method registered as ``name`` with hyper-parameters ``params``."""
    return ATTRIBUTIONS.create(name, **params)


def available() -> list[str]:
    """Names of the registered attribution methods."""
    return ATTRIBUTIONS.available()


def attribute(name: str, model: ModelLike, x: torch.Tensor, target: Target, **params: Any) -> torch.Tensor:
    """One call: ``create(name, **params).attribute(model, x, target)``."""
    return create(name, **params).attribute(model, x, target)
