"""The model adapter: any ``nn.Module`` that maps inputs to logits becomes a :class:`Classifier`."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn

from mlsafety.core._errors import InputError
from mlsafety.core._text import Modality, TextBatch, Texts, encode, modality_of, text_limit

ModelInput: TypeAlias = "torch.Tensor | TextBatch | Texts | Sequence[str]"
"""What a :class:`Classifier` takes: an image batch ``(N, C, H, W)``, token ids, or texts."""


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; put it first in a model so inputs stay in [0, 1].

    Args:
        mean: one value per channel (or one for all).
        std: one value per channel (or one for all); every value must be positive.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise InputError("Normalize std must be positive in every channel")
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def check_device(device: str | torch.device, who: str = "mlsafety") -> torch.device:
    """``device`` as a :class:`torch.device`, checked before anything is loaded: cpu, or a CUDA device that
    exists. ``who`` names the user in the refusal (``the audit``, ``the guard``).

    Raises:
        InputError: an unknown device name, another device type, or a CUDA device this machine lacks.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {str(device)!r} is not supported by {who}; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(
            f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return dev


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module with neither)."""
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


@contextlib.contextmanager
def frozen(module: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Put ``module`` in eval (or train) mode with parameter gradients off; restore on exit.

    Every submodule's ``training`` flag and every parameter's ``requires_grad`` flag are restored
    even when the body raises, so no function leaves a model changed.
    """
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        if any(mode != train for _, mode in modes):  # a model already in that mode is not walked again
            module.train(train)
        for p, flag in flags:
            if flag:
                p.requires_grad_(False)
        yield module
    finally:
        for m, mode in modes:
            if m.training != mode:  # only what changed: Module.__setattr__ is slow on a guard's hot path
                m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the body (a no-op when ``enabled`` is False); restore on exit.

    Unlike :func:`frozen` it leaves ``requires_grad`` alone, so gradients with respect to the
    parameters still flow when the caller wants them. Every submodule's ``training`` flag is
    restored, also when the body raises.
    """
    modes = [(m, m.training) for m in module.modules()] if enabled else []
    try:
        if enabled and any(mode for _, mode in modes):
            module.train(False)
        yield module
    finally:
        for m, mode in modes:
            if m.training != mode:  # only what changed: Module.__setattr__ is slow on a guard's hot path
                m.training = mode


def unwrap_logits(output: Any) -> torch.Tensor:
    """The logits tensor in a model's output: a tensor, a tuple or list (logits first), a dict with
    ``"logits"``, or an object with ``.logits`` (every ``transformers`` model output).

    Raises:
        InputError: the output is none of these, naming what was returned and how to adapt the model.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" in output and isinstance(output["logits"], torch.Tensor):
            return output["logits"]
        raise InputError(
            f"the model returned a {type(output).__name__} with keys {sorted(map(str, output))} but no 'logits' "
            "tensor; wrap the model so forward() returns the logits tensor"
        )
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InputError(
        f"the model returned {type(output).__name__}, not logits; make forward() return a tensor, a tuple with "
        "the logits first, a dict with 'logits' or an object with .logits"
    )


def _right_aligned(mask: torch.Tensor) -> torch.Tensor | None:
    """Gather index ``(N, L)`` that moves each row's leading padding to its end, or None when no row has any.

    Models with absolute or rotary positions number tokens from the first column, so a left-padded
    text would be read at shifted positions; moving the padding to the right makes every score
    independent of the padding side.
    """
    lead = (mask.cumsum(dim=1) == 0).sum(dim=1)
    if not bool((lead > 0).any()):
        return None
    width = mask.shape[1]
    return (torch.arange(width, device=mask.device) + lead[:, None]) % width


def _has_matrix_weight(module: nn.Module) -> bool:
    """Whether ``module`` itself holds a weight of two or more dimensions (Linear, Conv, ...; not an Embedding)."""
    weight = module._parameters.get("weight")
    return weight is not None and weight.ndim >= 2 and not isinstance(module, nn.Embedding)


def _out_channels(module: nn.Module) -> int | None:
    """K of a Linear (``out_features``) or a convolution (``out_channels``); None for other layers."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    return None


def pool_features(x: torch.Tensor, head: nn.Module | None) -> torch.Tensor:
    """The head's input as features ``(N, D)``: a convolution's map ``(N, C, *spatial)`` is mean-pooled over its
    spatial dimensions, a Linear's input ``(N, *, D)`` over the middle ones, anything else is flattened.

    A 1x1 convolution followed by global average pooling equals a Linear layer on the pooled map, so the
    pooled map is what the head reads (never the flattened ``C * H * W`` map).
    """
    if x.ndim <= 2:
        return x.reshape(x.shape[0], -1)
    if isinstance(head, nn.modules.conv._ConvNd):
        return x.mean(dim=tuple(range(2, x.ndim)))
    if isinstance(head, nn.Linear):
        return x.mean(dim=tuple(range(1, x.ndim - 1)))
    return x.reshape(x.shape[0], -1)


def _affine_map(head: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W (K, D), b (K,))`` when the head computes ``W f + b`` of its pooled input ``f`` (a Linear, or a 1x1
    convolution without groups), else None."""
    if isinstance(head, nn.Linear):
        w = head.weight.detach()
    elif (
        isinstance(head, nn.modules.conv._ConvNd)
        and all(k == 1 for k in head.kernel_size)
        and head.groups == 1
        and not head.transposed
    ):
        w = head.weight.detach().reshape(head.out_channels, head.in_channels)
    else:
        return None
    b = head.bias.detach() if head.bias is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
    return w, b


@dataclass(frozen=True)
class HeadInfo:
    """Which layer a :class:`Classifier` treats as its head (features are the head's input), and how it was chosen.

    Attributes:
        name: the head's dotted module name (``"classifier"``, ``"fc"``); None when no layer was found.
        kind: the head's class name (``"Linear"``, ``"Conv2d"``).
        feature_dim: D, the width of the features (the head's input, pooled); None before a pass has run.
        how: ``"named"`` (``head=``), ``"traced"`` (its output is the returned logits), ``"traced-upstream"``
            (the last layer with weights before the parameter-free layers, pooling or flattening, that produce
            the logits), or ``"none"``.
        pooled: the head's input was a spatial map and was mean-pooled into the features.
        affine: the logits equal ``W f + b`` of the features ``f`` (checked on the probe pass), so detectors
            that recompute logits from features (ReAct, ViM, DICE, ASH...) may use the head's weights.
    """

    name: str | None
    kind: str
    feature_dim: int | None
    how: str
    pooled: bool = False
    affine: bool = False

    def describe(self) -> str:
        """One line for reports: ``classifier (Linear, 768 features; traced: its output is the logits)``."""
        if self.name is None:
            return "none found (no layer with weights produces the logits); feature-based detectors are skipped"
        why = {
            "named": "named by head=",
            "traced": "traced: its output is the logits",
            "traced-upstream": "traced: the last layer with weights before the pooling that gives the logits",
        }.get(self.how, self.how)
        dim = f", {self.feature_dim} features" if self.feature_dim is not None else ""
        pooled = ", spatially mean-pooled" if self.pooled else ""
        return f"{self.name} ({self.kind}{dim}{pooled}; {why})"


@dataclass
class _Call:
    """One module call of a tracing pass: its output (weakly held, so the pass keeps no activations alive) and,
    for a Linear or 1x1 convolution, its pooled input (the features it would give as the head)."""

    name: str
    module: nn.Module
    feats: torch.Tensor | None
    output: weakref.ref[torch.Tensor] | None
    out_shape: tuple[int, ...] | None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _output_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module returned: itself, the first of a tuple, or the ``logits`` of a dict / output object."""
    out = _first_tensor(output)
    if out is None and output is not None:
        found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        out = found if isinstance(found, torch.Tensor) else None
    return out


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a view of the same storage with the same shape (what a Flatten or Identity returns)."""
    if a is None:
        return False
    if a is b:
        return True
    return (
        a.shape == b.shape
        and a.device == b.device
        and a.numel() > 0
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
    )


def _pick_head(calls: list[_Call], logits: torch.Tensor) -> tuple[_Call | None, str]:
    """The call that is the head, and how it was found (see :class:`HeadInfo`), from one pass's calls."""
    k = int(logits.shape[1])
    producers = [i for i, c in enumerate(calls) if c.output is not None and _same_tensor(c.output(), logits)]
    if producers:
        first = producers[0]  # innermost: a module finishes before the container that returned its output
        if _has_matrix_weight(calls[first].module):
            return calls[first], "traced"
        upto = first
    else:
        upto = len(calls) - 1
    for c in reversed(calls[: upto + 1]):  # a head whose logits pass through pooling: a Linear or 1x1 convolution
        if c.feats is not None and c.out_shape is not None and len(c.out_shape) >= 2:
            width = c.out_shape[-1] if isinstance(c.module, nn.Linear) else c.out_shape[1]
            if int(width) == k:
                return c, "traced-upstream"
    return None, "none"


def _is_texts(x: Any) -> bool:
    return isinstance(x, Texts) or (isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x))


class Classifier:
    """Adapter around any ``nn.Module`` that maps inputs ``(N, ...)`` to logits ``(N, K)``.

    The head is found by tracing (:meth:`trace`): during one probe pass on a few inputs, hooks on
    every submodule record which one returns the very tensor the model returns as its logits; that
    layer is the head when it has weights (a Linear, a convolution). When the logits come out of a
    parameter-free layer (global pooling, flattening), the head is the last layer with weights and K
    outputs before it (a 1x1 convolution + pooling head). ``head="name"`` overrides the search.
    Registration order plays no part: a model that registers its classifier first works. The first
    :meth:`features_and_logits` (or :func:`~mlsafety.core.forward`) traces by itself; before that,
    :attr:`head` is a guess (the last Linear registered). :attr:`head_info` says which layer was
    chosen and how.

    Features are the head's input, captured by a forward hook during the same forward pass that
    computes the logits, so asking for them never costs a second pass; a convolution's input map is
    mean-pooled over its spatial dimensions (:func:`pool_features`). The hook is removed before the
    call returns, also when the forward pass raises.

    A model's forward may return a tensor, a tuple (logits first), a dict with ``"logits"`` or an
    object with ``.logits`` (see :func:`unwrap_logits`). Text models (``modality == "text"``) take
    a :class:`~mlsafety.core.TextBatch`, a :class:`~mlsafety.core.Texts` or a list of strings; texts
    are tokenised by the classifier's tokenizer (:meth:`encode`) and the module is called as
    ``module(input_ids=..., attention_mask=...)``. Texts are padded on the right, and a batch padded
    on the left is re-aligned to the right first, so that position numbering (absolute or rotary)
    starts at each text's first token: padding never changes a score.

    Args:
        module: the model; torchvision/timm-style and ``transformers`` models work unchanged.
        head: dotted name of the head module (e.g. ``"fc"``), or None to find it by tracing.
        tokenizer: the text model's tokenizer; None: ``module.tokenizer`` when the module has one.
        max_length: tokens per text at most; None: the tokenizer's ``model_max_length``, else the
            model config's ``max_position_embeddings``, else no limit.

    Example:
        >>> clf = Classifier(model)
        >>> feats, logits = clf.features_and_logits(x)
        >>> Classifier(bert, tokenizer=tok).logits(["a fine film", "a dull one"])
    """

    def __init__(
        self, module: nn.Module, head: str | None = None, tokenizer: Any = None, max_length: int | None = None
    ) -> None:
        if isinstance(module, Classifier):
            raise TypeError("module is already a Classifier; use it directly")
        if not isinstance(module, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        if max_length is not None and int(max_length) < 1:
            raise InputError(f"max_length must be a positive number of tokens, got {max_length}")
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
            raise InputError(
                "model has lazy layers whose weights are not created yet (e.g. nn.LazyLinear); run one forward "
                "pass on a sample batch before wrapping it"
            )
        self.module = module
        self.tokenizer = tokenizer if tokenizer is not None else getattr(module, "tokenizer", None)
        self.max_length = max_length
        self._named = head is not None
        self._head_name, self._head = self._find_head(module, head)
        self._info: HeadInfo | None = None
        # K from the named (or, until the first pass, the guessed) head; a pass's logits confirm or replace a guess
        self._num_classes: int | None = _out_channels(self._head) if self._head is not None else None
        self._k_known = self._named and self._num_classes is not None
        self._params: tuple[frozenset[str], bool] | None = None

    @staticmethod
    def _find_head(module: nn.Module, head: str | None) -> tuple[str | None, nn.Module | None]:
        """The named head, or before any pass a guess: the last Linear registered (else the last 1x1 convolution)."""
        named = dict(module.named_modules())
        if head is not None:
            if head not in named or not head:
                shown = [n for n, m in named.items() if n and _has_matrix_weight(m)][-5:]
                raise InputError(
                    f"model has no submodule named {head!r}; pass head= one of its module names "
                    f"(its last layers with weights: {', '.join(shown) or 'none'})"
                )
            return head, named[head]
        last_linear: tuple[str | None, nn.Module | None] = (None, None)
        last_weighted: tuple[str | None, nn.Module | None] = (None, None)
        for name, sub in named.items():
            if isinstance(sub, nn.Linear):
                last_linear = (name, sub)
            if name and _affine_map(sub) is not None:
                last_weighted = (name, sub)
        return last_linear if last_linear[1] is not None else last_weighted

    @property
    def head(self) -> nn.Module | None:
        """The head module (see the class docs); None when tracing found none."""
        return self._head

    @property
    def head_name(self) -> str | None:
        """The head's dotted module name."""
        return self._head_name

    @property
    def head_info(self) -> HeadInfo | None:
        """Which layer is the head and how it was found; None until a pass has traced it (:meth:`trace`)."""
        return self._info

    def trace(self, x: ModelInput, force: bool = False) -> HeadInfo:
        """Find the head by one probe pass on ``x`` (a few inputs are enough), in eval mode, without gradients.

        Returns the cached answer after the first call unless ``force``. The model's modes are restored and
        every hook removed before it returns, also when the forward pass raises.
        """
        if self._info is None or force:
            with eval_mode(self.module), torch.no_grad():
                self._trace_pass(x)
        assert self._info is not None
        return self._info

    def _trace_pass(self, x: ModelInput) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One forward pass with a hook on every submodule; sets the head and :attr:`head_info`; returns
        ``(features or None, logits)`` of ``x``. Outputs are held weakly and only the pooled inputs of
        Linear and 1x1 convolution layers are kept, so the pass costs little more memory than a plain one."""
        calls: list[_Call] = []

        def record(name: str) -> Any:
            def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                feats = None
                if _affine_map(m) is not None or (self._named and m is self._head):
                    first = _first_tensor(args)
                    if first is None:
                        first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
                    feats = None if first is None else pool_features(first, m)
                out = _output_tensor(output)
                ref = weakref.ref(out) if out is not None else None
                calls.append(_Call(name, m, feats, ref, tuple(out.shape) if out is not None else None))

            return hook

        handles = [m.register_forward_hook(record(n), with_kwargs=True) for n, m in self.module.named_modules() if n]
        try:
            logits = self.logits(x)
        finally:
            for h in handles:
                h.remove()
        if self._named:
            mine = [c for c in calls if c.module is self._head]
            call, how = (mine[-1] if mine else None), "named"
            if call is None:
                raise InputError(
                    f"the head {self._head_name!r} was not called during the forward pass; pass head= naming the "
                    "layer that computes the logits"
                )
        else:
            call, how = _pick_head(calls, logits)
            self._head_name, self._head = (call.name, call.module) if call is not None else (None, None)
        feats = call.feats if call is not None else None
        affine = False
        wb = _affine_map(call.module) if call is not None else None
        if feats is not None and wb is not None and feats.shape[1] == wb[0].shape[1]:
            w, b = wb
            again = feats.detach().to(w.dtype) @ w.T + b
            scale = max(1.0, float(logits.detach().abs().max())) if logits.numel() else 1.0
            affine = bool(torch.allclose(again, logits.detach().to(w.dtype), rtol=1e-3, atol=1e-4 * scale))
        self._info = HeadInfo(
            name=self._head_name if call is not None else None,
            kind=type(call.module).__name__ if call is not None else "",
            feature_dim=int(feats.shape[1]) if feats is not None else None,
            how=how,
            pooled=feats is not None and call is not None and isinstance(call.module, nn.modules.conv._ConvNd),
            affine=affine,
        )
        return feats, logits

    # ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return device_of(self.module)

    @property
    def num_classes(self) -> int:
        """K: from the first forward pass, else from the (named or guessed) head's outputs."""
        if self._num_classes is None:
            raise InputError("number of classes unknown: run logits() once or pass head= naming the final layer")
        return self._num_classes

    @property
    def known_num_classes(self) -> int | None:
        """K when it is certain without a forward pass (a named head, or after the first pass); None while it is
        only guessed from a head the classifier found by itself (the first pass confirms it)."""
        return self._num_classes if self._k_known else None

    @property
    def head_weight(self) -> torch.Tensor:
        """The head's weight ``(K, D)`` (detached; a 1x1 convolution's kernel as a matrix)."""
        return self._affine_head()[0]

    @property
    def head_bias(self) -> torch.Tensor:
        """The head's bias ``(K,)`` (zeros when the head has none)."""
        return self._affine_head()[1]

    @property
    def head_is_affine(self) -> bool:
        """Whether the logits are ``W f + b`` of the features with the head's weights (:attr:`head_weight` and
        :attr:`head_bias` are then usable): a Linear head, or a 1x1 convolution followed by average pooling."""
        try:
            self._affine_head()
        except InputError:
            return False
        return True

    def _affine_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        wb = _affine_map(self._head)
        if wb is None:
            kind = type(self._head).__name__ if self._head is not None else "no head"
            raise InputError(
                f"the head {self._head_name!r} ({kind}) is not a Linear or 1x1 convolution, so the logits are not "
                "W f + b of the features; pass head= naming the final Linear layer"
            )
        if self._info is not None and self._info.feature_dim is not None and not self._info.affine:
            raise InputError(
                f"the logits are not W f + b of the head {self._head_name!r}'s pooled input (something non-linear "
                "follows the head, e.g. max pooling or a temperature); detectors that use the head's weights "
                "(ReAct, ViM, DICE, ASH...) cannot run on this model"
            )
        return wb

    # ----------------------------------------------------------------------------------------
    def _check_logits(self, logits: Any, n: int) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != n:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            if isinstance(logits, torch.Tensor) and logits.ndim == 3 and self.modality == "text":
                raise InputError(
                    f"model output has shape {shape}, per-token logits of a language model, not class logits (N, K); "
                    "use mlsafety.core.LanguageModel for causal LMs"
                )
            raise InputError(
                f"model output must be logits of shape (N, K) with N={n}, got {shape}; "
                "wrap the model so forward() returns one logits tensor"
            )
        if not self._k_known:
            self._num_classes, self._k_known = int(logits.shape[1]), True
        elif logits.shape[1] != self._num_classes:
            raise InputError(
                f"model returned {logits.shape[1]} logits but its head {self._head_name!r} has {self._num_classes} "
                "outputs; pass head= naming the layer that computes the logits"
            )
        return logits

    def logits(self, x: ModelInput) -> torch.Tensor:
        """Logits ``(N, K)`` for inputs ``x``; gradients flow if the caller enables them.

        ``x`` is an image batch (any tensor the module takes), or for text models a
        :class:`~mlsafety.core.TextBatch`, :class:`~mlsafety.core.Texts` or list of strings.
        """
        if isinstance(x, torch.Tensor):
            try:
                out = self.module(x)
            except RuntimeError as e:
                _raise_dtype_mismatch(x, self.module, e)
                raise
            return self._check_logits(unwrap_logits(out), x.shape[0])
        batch = self._as_batch(x)
        out = self._call_text(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return self._check_logits(unwrap_logits(out), len(batch))

    __call__ = logits

    def features_and_logits(self, x: ModelInput, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``(N, D)`` (the head's input; pooled, see :func:`pool_features`) and logits ``(N, K)``.

        One forward pass, in eval mode (dropout off, batch-norm running statistics used, the global
        random generator untouched) unless ``train`` is True, which runs the model in whatever mode
        it is in. The model's modes are restored and the hook that captures the features is
        removed before the call returns, also when the forward pass raises.

        Args:
            x: inputs ``(N, ...)`` on the model's device, or texts / a ``TextBatch`` (see :meth:`logits`).
            train: run in the model's current mode instead of eval mode (e.g. for MC dropout).
        """
        feats, logits = self.maybe_features_and_logits(x, train)
        if feats is None:
            raise InputError(
                "cannot read features: no layer with weights produces the logits; pass head= naming the final layer"
            )
        return feats, logits

    def maybe_features_and_logits(self, x: ModelInput, train: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """:meth:`features_and_logits`, with None for the features when tracing found no head (no error)."""
        if self._info is None:  # the first pass traces the head: no extra pass
            with eval_mode(self.module, enabled=not train):
                return self._trace_pass(x)
        head = self._head
        if head is None:
            with eval_mode(self.module, enabled=not train):
                return None, self.logits(x)
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            first = _first_tensor(args)
            if first is None:
                first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if first is not None:
                captured.append(first)

        handle = head.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with eval_mode(self.module, enabled=not train):
                logits = self.logits(x)
        finally:
            handle.remove()
        if not captured:
            raise InputError(
                f"the head {self._head_name!r} was not called during the forward pass; "
                "pass head= naming the final layer"
            )
        return pool_features(captured[-1], head), logits

    # ---------------------------------------------------------------------------------- text
    @property
    def modality(self) -> Modality:
        """``"text"`` for a model with a tokenizer or one whose forward takes ``input_ids``, else ``"image"``."""
        return "text" if self.tokenizer is not None else modality_of(self.module)

    @property
    def text_max_length(self) -> int | None:
        """Tokens per text at most: ``max_length``, else the smaller of the tokenizer's limit and the model's
        position embeddings (less RoBERTa's padding offset), else None."""
        if self.max_length is not None:
            return int(self.max_length)
        return text_limit(self.tokenizer, self.module)

    def encode(self, texts: Sequence[str]) -> TextBatch:
        """Token ids of ``texts`` by the classifier's tokenizer (see :func:`~mlsafety.core.encode`), on the CPU."""
        if self.tokenizer is None:
            raise InputError(
                f"{type(self.module).__name__} has no tokenizer, so it cannot read texts; "
                "pass Classifier(model, tokenizer=...) or give a TextBatch"
            )
        return encode(self.tokenizer, texts, max_length=self.text_max_length, padding_side="right")

    def _as_batch(self, x: Any, align: bool = True) -> TextBatch:
        """``x`` as a :class:`TextBatch` on the model's device, its token ids checked against the vocabulary,
        its padding moved to the right when ``align``."""
        if _is_texts(x):
            x = self.encode(x)
        if not isinstance(x, TextBatch):
            raise InputError(
                f"model inputs must be a tensor, a TextBatch, Texts or a list of strings, got {type(x).__name__}"
            )
        batch = x.to(self.device)
        pad = self._config_pad_id()
        if pad is not None:  # the model finds padding by its own pad id (decoder classifiers pool the last real token)
            ids = torch.where(batch.attention_mask.bool(), batch.input_ids, torch.full_like(batch.input_ids, pad))
            batch = TextBatch(ids, batch.attention_mask, batch.truncated)
        index = _right_aligned(batch.attention_mask) if align else None
        if index is not None:
            batch = TextBatch(batch.input_ids.gather(1, index), batch.attention_mask.gather(1, index), batch.truncated)
        layer = self._find_embedding()
        vocab = getattr(layer, "num_embeddings", None)
        if isinstance(vocab, int) and batch.input_ids.numel():
            hi, lo = int(batch.input_ids.max()), int(batch.input_ids.min())
            if hi >= vocab or lo < 0:
                raise InputError(
                    f"token id {hi if hi >= vocab else lo} is outside the model's vocabulary of {vocab} embeddings: "
                    "the tokenizer does not match the model; pass the tokenizer the model was trained with"
                )
        return batch

    def _config_pad_id(self) -> int | None:
        """The model config's ``pad_token_id`` when it states one, else None."""
        pad = getattr(getattr(self.module, "config", None), "pad_token_id", None)
        if isinstance(pad, list):
            pad = pad[0] if pad else None
        return pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else None

    def _pools_last_token(self) -> bool:
        """Whether the forward pools on the last non-pad token it finds in ``input_ids`` (``transformers``
        decoder sequence classifiers: GPT-2, Llama, ... with a ``score`` head), which ``inputs_embeds`` hides."""
        return isinstance(getattr(self.module, "score", None), nn.Linear) and self._config_pad_id() is not None

    def _accepted(self) -> tuple[frozenset[str], bool]:
        """Names the module's forward takes, and whether it takes ``**kwargs``."""
        if self._params is None:
            try:
                params = inspect.signature(self.module.forward).parameters.values()
            except (TypeError, ValueError):  # builtins or C extensions without a signature
                self._params = (frozenset(), True)
            else:
                names = frozenset(p.name for p in params)
                self._params = (names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))
        return self._params

    def _takes(self, name: str) -> bool:
        names, var_kw = self._accepted()
        return name in names or var_kw

    def _call_text(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> Any:
        kwargs: dict[str, torch.Tensor] = {}
        if attention_mask is not None and self._takes("attention_mask"):
            kwargs["attention_mask"] = attention_mask
        if inputs_embeds is not None:
            return self.module(inputs_embeds=inputs_embeds, **kwargs)
        if self._takes("input_ids"):
            return self.module(input_ids=input_ids, **kwargs)
        return self.module(input_ids, **kwargs)

    def _find_embedding(self) -> nn.Module | None:
        get = getattr(self.module, "get_input_embeddings", None)
        if callable(get):
            try:
                layer = get()
            except (NotImplementedError, AttributeError):
                layer = None
            if isinstance(layer, nn.Module):
                return layer
        return next((m for m in self.module.modules() if isinstance(m, nn.Embedding)), None)

    @property
    def embedding_layer(self) -> nn.Module:
        """The input (word) embedding layer: ``get_input_embeddings()`` of a ``transformers`` model, else the
        first ``nn.Embedding``."""
        layer = self._find_embedding()
        if layer is None:
            raise InputError(
                f"{type(self.module).__name__} has no input embedding layer (no get_input_embeddings() and no "
                "nn.Embedding); embeddings need a text model"
            )
        return layer

    def embeddings(self, x: TextBatch | Texts | Sequence[str]) -> torch.Tensor:
        """Input (word) embeddings ``(N, L, D)`` of a batch: the embedding layer's output for its token ids.

        Positions and token types are added inside the model, as in a normal forward pass, so
        ``logits_from_embeddings(embeddings(b), b.attention_mask)`` equals ``logits(b)``. The rows
        keep ``b``'s layout (left padding stays left).
        """
        batch = self._as_batch(x, align=False)
        return self.embedding_layer(batch.input_ids)  # type: ignore[no-any-return]

    def logits_from_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` from input embeddings ``(N, L, D)`` in place of token ids; gradients flow to them.

        The module's forward receives ``inputs_embeds=`` when it takes it (``transformers`` models);
        otherwise a forward hook makes the embedding layer return ``embeddings`` (the hook is removed
        before the call returns, also when the forward pass raises). Runs in the model's current mode.

        Args:
            embeddings: ``(N, L, D)`` on the model's device, e.g. from :meth:`embeddings`, perturbed.
            attention_mask: ``(N, L)``, 1 on real tokens, 0 on padding.
        """
        if embeddings.ndim != 3 or attention_mask.shape != embeddings.shape[:2]:
            raise InputError(
                f"embeddings must be (N, L, D) with an attention_mask (N, L), got {tuple(embeddings.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        n = int(embeddings.shape[0])
        index = _right_aligned(attention_mask)
        if index is not None:  # as in logits(): positions count from each text's first token
            attention_mask = attention_mask.gather(1, index)
            embeddings = embeddings.gather(1, index[:, :, None].expand_as(embeddings))
        last_token = self._pools_last_token()
        if "inputs_embeds" in self._accepted()[0] and not last_token:  # named, not merely swallowed by **kwargs
            return self._check_logits(
                unwrap_logits(self._call_text(attention_mask=attention_mask, inputs_embeds=embeddings)), n
            )

        def replace(_m: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor:
            return embeddings

        handle = self.embedding_layer.register_forward_hook(replace)
        try:
            ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            pad = self._config_pad_id()
            if last_token and pad is not None:  # stand-in ids that show the model where each text ends
                real = 1 if pad != 1 else 0
                ids = torch.where(attention_mask.bool(), torch.full_like(ids, real), torch.full_like(ids, pad))
            out = self._call_text(input_ids=ids, attention_mask=attention_mask)
        finally:
            handle.remove()
        return self._check_logits(unwrap_logits(out), n)

    def __repr__(self) -> str:
        return f"Classifier({type(self.module).__name__}, head={self.head_name!r})"


ModelLike: TypeAlias = nn.Module | Classifier
"""What every public function that takes a model accepts: a plain ``nn.Module`` or a :class:`Classifier`."""


def as_classifier(model: ModelLike) -> Classifier:
    """Wrap a plain ``nn.Module`` (a :class:`Classifier` passes through unchanged)."""
    return model if isinstance(model, Classifier) else Classifier(model)


def _raise_dtype_mismatch(x: torch.Tensor, module: nn.Module, error: RuntimeError) -> None:
    """Turn the raw dtype error of floating inputs that differ from the weights' dtype (e.g. float64 from numpy
    into a float32 model) into one line naming the fix; checked only after the forward pass failed, so the
    hot path costs nothing."""
    if not x.is_floating_point():
        return
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    if weight is None or weight.dtype == x.dtype:
        return
    raise InputError(
        f"inputs are {x.dtype} but the model's weights are {weight.dtype}; convert the inputs with "
        f"x.to({weight.dtype}) (numpy arrays become float64: use torch.from_numpy(a).float())"
    ) from error
