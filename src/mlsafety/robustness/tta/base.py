"""Shared machinery of test-time adaptation (TTA): the :class:`TTAMethod` base class and its registry.

Test-time adaptation changes how a model normalises (and, for TENT and pseudo-labelling, its
normalisation affine parameters) on the test batch it is given. Here it never changes the model:

* every batch-norm layer (``nn.BatchNorm1d/2d/3d``) is evaluated by :func:`normalised_logits`,
  which swaps the layer's ``forward`` for the method's own normalisation for the duration of one
  forward pass (and swaps it back, also when the pass raises); the model stays in eval mode
  (dropout off) with its parameter gradients off (:func:`mlsafety.core.frozen`);
* the adapted affine parameters and the optimiser's moments live in a :class:`TTAState`, not in the
  model; :class:`mlsafety.robustness.tta.Stream` carries it from batch to batch.

Everything is differentiable with respect to the inputs, so the Distribution Invading Attack
(:mod:`.dia`) differentiates the adapted predictions on benign inputs with respect to the malicious
inputs of the same batch, through the batch statistics and through unrolled update steps.

Groups: the functions take ``groups`` independent test batches stacked as one tensor
``(groups * B, ...)``; statistics and adapted parameters are per group, so many attacked batches run
in one vectorised pass. Only batch-norm layers adapt; layer and group norm (per-sample statistics)
are left as they are, and a model without batch norm is refused with one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mlsafety.core import (
    Classifier,
    HyperParams,
    InputError,
    ModelLike,
    Param,
    Registry,
    as_classifier,
    check_images,
    frozen,
)


@dataclass
class TTAState:
    """What adaptation carries from one batch to the next.

    Attributes:
        params: adapted affine parameters by ``"<layer>.weight"`` / ``"<layer>.bias"``, each
            ``(groups, C)``; empty for methods that only re-estimate statistics.
        moments: the optimiser's buffers by ``"<param>.<buffer>"`` (``momentum``, ``exp_avg``,
            ``exp_avg_sq``), shaped like the parameter.
        steps: optimiser steps taken so far (Adam's bias correction counts them).
    """

    params: dict[str, torch.Tensor] = field(default_factory=dict)
    moments: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0

    def detached(self) -> TTAState:
        """The same state cut from any autograd graph (what a stream keeps between batches)."""
        return TTAState(
            {k: v.detach() for k, v in self.params.items()},
            {k: v.detach() for k, v in self.moments.items()},
            self.steps,
        )


@contextlib.contextmanager
def adaptation_mode() -> Iterator[None]:
    """Gradients on, also inside ``torch.inference_mode()`` or ``torch.no_grad()`` (adaptation and the
    attack differentiate); clone inputs made under inference mode inside it before use."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def norm_layers(module: nn.Module) -> dict[str, _BatchNorm]:
    """The batch-norm layers of ``module`` by qualified name; an :class:`InputError` if it has none."""
    layers = {name: m for name, m in module.named_modules() if isinstance(m, _BatchNorm)}
    if not layers:
        raise InputError(
            f"{type(module).__name__} has no batch-norm layers, so test-time adaptation cannot change it; "
            "use a model with nn.BatchNorm layers (e.g. zoo model 'digits-cnn-bn')"
        )
    return layers


def check_batch(x: torch.Tensor, groups: int = 1) -> int:
    """Check a stack of ``groups`` test batches ``(groups * B, C, H, W)`` in [0, 1]; return ``B``."""
    check_images(x)
    n = int(x.shape[0])
    if n % groups:
        raise InputError(f"{n} inputs do not split into {groups} equal batches; give groups * batch_size inputs")
    b = n // groups
    if b < 2:
        raise InputError(f"test-time adaptation needs batches of at least 2 inputs, got {b}")
    return b


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance ``(G, C)`` of ``x`` ``(G, B, C, *spatial)`` over the batch and space.

    The biased variance is what batch norm normalises with in training mode (Ioffe & Szegedy 2015).
    """
    dims = (1, *range(3, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def _bn_forward(method: TTAMethod, layer: _BatchNorm, name: str, params: dict[str, torch.Tensor], groups: int) -> Any:
    native = type(method).statistics is TTAMethod.statistics

    def forward(inp: torch.Tensor) -> torch.Tensor:
        if native:
            return _native_batch_norm(layer, name, params, groups, inp)
        xs = inp.reshape(groups, -1, *inp.shape[1:])
        mean, var = method.statistics(layer, xs)
        shape = (groups, 1, inp.shape[1]) + (1,) * (inp.ndim - 2)
        out = (xs - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + layer.eps)
        weight = params.get(f"{name}.weight", layer.weight)
        bias = params.get(f"{name}.bias", layer.bias)
        if weight is not None:
            out = out * (weight.reshape(shape) if weight.ndim == 2 else weight.reshape(shape[1:]))
        if bias is not None:
            out = out + (bias.reshape(shape) if bias.ndim == 2 else bias.reshape(shape[1:]))
        return out.reshape(inp.shape)

    return forward


def _native_batch_norm(
    layer: _BatchNorm, name: str, params: dict[str, torch.Tensor], groups: int, inp: torch.Tensor
) -> torch.Tensor:
    """Batch statistics per group through PyTorch's own kernel, one call per group (the same numbers
    as :func:`batch_statistics`, with the kernel's faster backward)."""
    c = inp.shape[1]
    weight = params.get(f"{name}.weight", layer.weight)
    bias = params.get(f"{name}.bias", layer.bias)
    ws = [None] * groups if weight is None else list(weight.reshape(-1, c).expand(groups, c))
    bs = [None] * groups if bias is None else list(bias.reshape(-1, c).expand(groups, c))
    parts = inp.chunk(groups)
    out = [
        F.batch_norm(xg, None, None, w, b, training=True, eps=layer.eps) for xg, w, b in zip(parts, ws, bs, strict=True)
    ]
    return out[0] if groups == 1 else torch.cat(out)


@contextlib.contextmanager
def _swapped(layers: dict[str, _BatchNorm], forwards: dict[str, Any]) -> Iterator[None]:
    saved = {name: m.__dict__.get("forward") for name, m in layers.items()}
    try:
        for name, m in layers.items():
            m.forward = forwards[name]  # type: ignore[method-assign]
        yield
    finally:
        for name, m in layers.items():
            if saved[name] is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = saved[name]  # type: ignore[method-assign,assignment]


def normalised_logits(
    method: TTAMethod, clf: Classifier, x: torch.Tensor, params: dict[str, torch.Tensor], groups: int = 1
) -> torch.Tensor:
    """Logits ``(groups * B, K)`` with every batch-norm layer normalising by ``method.statistics``
    of its group and scaling by ``params`` (the layer's own affine parameters where absent).

    Pure: the model's weights, buffers (running statistics included) and modes are not touched.
    """
    layers = norm_layers(clf.module)
    forwards = {name: _bn_forward(method, m, name, params, groups) for name, m in layers.items()}
    with _swapped(layers, forwards):
        return clf.logits(x)


class TTAMethod(HyperParams):
    """Base class of test-time adaptation methods: ``method.adapt(model, x) -> logits``.

    A subclass overrides :meth:`statistics` (how a layer normalises a test batch) and, when it
    updates parameters, :meth:`step` (see :class:`GradientTTA`). The base class's :meth:`adapt`
    does the chores: wraps and freezes the model (eval mode, parameter gradients off, both
    restored), checks the batch, and leaves the model as it found it.
    """

    name: ClassVar[str]
    updates_params: ClassVar[bool] = False
    """Whether the method changes affine parameters (then a stream carries them forward)."""

    # -- what a method writes ------------------------------------------------------------------
    def statistics(self, layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(G, C)`` that ``layer`` normalises ``x`` ``(G, B, C, *spatial)`` with.

        Default: the test batch's own statistics (biased variance), as TeBN and TENT use.
        """
        return batch_statistics(x)

    def init_state(self, clf: Classifier, groups: int = 1) -> TTAState:
        """The state before the first batch (the model's own affine parameters, no moments)."""
        norm_layers(clf.module)
        return TTAState()

    def step(
        self, clf: Classifier, x: torch.Tensor, state: TTAState, groups: int = 1, create_graph: bool = False
    ) -> tuple[torch.Tensor, TTAState]:
        """Adapt on ``groups`` stacked batches ``x`` and predict them: ``(logits, new_state)``.

        Runs with the model already frozen. Gradients flow to ``x`` when it requires them; with
        ``create_graph`` the update itself is part of the graph (the attack unrolls through it).
        """
        return normalised_logits(self, clf, x, state.params, groups), state

    # -- the chores ----------------------------------------------------------------------------
    def adapt(self, model: ModelLike, x: torch.Tensor) -> torch.Tensor:
        """Adapt to the test batch ``x`` (B, C, H, W) in [0, 1] (B >= 2) and return its logits (B, K).

        The model is left unchanged (weights, buffers, modes, ``requires_grad``), also on errors.
        """
        clf = as_classifier(model)
        check_batch(x)
        with frozen(clf.module), adaptation_mode():
            x0 = x.detach().to(clf.device).clone()  # a normal tensor even when x was made under inference mode
            logits, _ = self.step(clf, x0, self.init_state(clf))
        return logits.detach()

    __call__ = adapt


# -- methods that take gradient steps on the affine parameters ---------------------------------
OPTIMIZERS = ("sgd", "adam")


class GradientTTA(TTAMethod):
    """Base of methods that minimise an unsupervised loss over the batch-norm affine parameters.

    One call of :meth:`step` normalises with the batch statistics, takes ``steps`` optimiser steps
    on :meth:`objective` (the mean over the batch) and predicts with the updated parameters when
    ``predict_after_update`` is True. The optimisers are written out (functional, so the update can
    be unrolled by the attack) and follow ``torch.optim.SGD`` (no dampening, no weight decay) and
    ``torch.optim.Adam`` (default betas and eps) exactly, with their state kept in :class:`TTAState`.
    """

    updates_params = True
    steps = Param(1, int, low=1, doc="optimiser steps per test batch (TENT uses 1)")
    optimizer = Param("adam", str, choices=OPTIMIZERS, doc="'adam' (TENT's CIFAR setting) or 'sgd' with momentum")
    lr = Param(1e-3, float, low=0, low_open=True, doc="learning rate (TENT: 1e-3 with Adam, 2.5e-4 with SGD)")
    momentum = Param(0.9, float, low=0, high=1, high_open=True, doc="SGD momentum (unused by Adam)")
    predict_after_update = Param(
        True,
        bool,
        doc="predict the batch with the updated parameters (TENT's code returns the outputs before the update)",
    )

    fixed_target: ClassVar[bool] = False
    """Whether :meth:`objective` builds a fixed target from ``reference`` (then an unrolled step
    computes it in a pass of its own, see :meth:`step`)."""

    def objective(self, logits: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The loss per group ``(G,)`` from logits ``(G, B, K)`` (a mean over each batch).

        ``reference``: the same logits as a function of the inputs and of the parameters' values,
        but not of the parameters the optimiser differentiates (what a fixed target is built
        from); None: ``logits.detach()`` serves (nothing differentiates through the update).
        """
        raise NotImplementedError

    def init_state(self, clf: Classifier, groups: int = 1) -> TTAState:
        params: dict[str, torch.Tensor] = {}
        for name, m in norm_layers(clf.module).items():
            for key in ("weight", "bias"):
                p = getattr(m, key)
                if p is not None:
                    params[f"{name}.{key}"] = p.detach().expand(groups, -1).clone()
        if not params:
            raise InputError(
                f"{self.name} adapts batch-norm affine parameters but the model's batch-norm layers have none "
                "(affine=False); use 'tebn' instead"
            )
        return TTAState(params)

    def step(
        self, clf: Classifier, x: torch.Tensor, state: TTAState, groups: int = 1, create_graph: bool = False
    ) -> tuple[torch.Tensor, TTAState]:
        params = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in state.params.items()}
        moments, t = dict(state.moments), state.steps
        logits = normalised_logits(self, clf, x, params, groups)
        for s in range(self.steps):
            names = list(params)
            wrt, reference = params, None
            if create_graph and self.fixed_target:
                # the optimiser's gradient holds the target fixed, but the target still depends on the
                # inputs (the malicious ones too): differentiate the loss with respect to copies of the
                # parameters, and build the target from the pass with the parameters themselves
                wrt = {k: v.clone() for k, v in params.items()}
                reference = logits.reshape(groups, -1, logits.shape[-1])
                logits = normalised_logits(self, clf, x, wrt, groups)
            loss = self.objective(logits.reshape(groups, -1, logits.shape[-1]), reference).sum()
            # keep the graph when the caller differentiates the logits to the inputs (first order)
            keep = create_graph or x.requires_grad
            grads = torch.autograd.grad(loss, [wrt[k] for k in names], create_graph=create_graph, retain_graph=keep)
            t += 1
            new: dict[str, torch.Tensor] = {}
            for k, g in zip(names, grads, strict=True):
                new[k] = self._update(k, params[k], g, moments, t)
                if not create_graph:
                    new[k] = new[k].detach().requires_grad_()
            params = new
            if s + 1 < self.steps or self.predict_after_update:
                logits = normalised_logits(self, clf, x, params, groups)
        return logits, TTAState(params, moments, t)

    def _update(
        self, key: str, p: torch.Tensor, g: torch.Tensor, moments: dict[str, torch.Tensor], t: int
    ) -> torch.Tensor:
        if self.optimizer == "sgd":
            buf = moments.get(f"{key}.momentum")
            buf = g if buf is None or self.momentum == 0 else self.momentum * buf + g
            moments[f"{key}.momentum"] = buf
            return p - self.lr * buf
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = b1 * moments.get(f"{key}.exp_avg", torch.zeros_like(p)) + (1 - b1) * g
        v = b2 * moments.get(f"{key}.exp_avg_sq", torch.zeros_like(p)) + (1 - b2) * g * g
        moments[f"{key}.exp_avg"], moments[f"{key}.exp_avg_sq"] = m, v
        # clamp_min keeps sqrt's derivative finite at v = 0 (unrolled updates); 1e-30 is far below eps**2
        denom = torch.sqrt(v.clamp_min(1e-30) / (1 - b2**t)) + eps
        return p - (self.lr / (1 - b1**t)) * m / denom


# -- the registry ------------------------------------------------------------------------------
TTA_METHODS: Registry[TTAMethod] = Registry("test-time adaptation method")
register_tta = TTA_METHODS.register


def create(name: str, **params: Any) -> TTAMethod:
    """The method registered as ``name`` with hyper-parameters ``params``, e.g. ``create("tent", lr=1e-3)``."""
    return TTA_METHODS.create(name, **params)


def available() -> list[str]:
    """Registered test-time adaptation method names, sorted."""
    return TTA_METHODS.available()
