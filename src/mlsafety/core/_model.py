"""The model adapter: any ``nn.Module`` that maps inputs to logits becomes a :class:`Classifier`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

from mlsafety.core._errors import InputError


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
        module.train(train)
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for m, mode in modes:
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
            m.training = mode


class Classifier:
    """Adapter around any ``nn.Module`` that maps inputs ``(N, ...)`` to logits ``(N, K)``.

    The head is the final ``nn.Linear`` of the module (the last one registered) unless ``head``
    names another submodule. Features are the head's input, captured by a forward hook during the
    same forward pass that computes the logits, so asking for them never costs a second pass. The
    hook is removed before the call returns, also when the forward pass raises.

    Args:
        module: the model; torchvision/timm-style models work unchanged.
        head: dotted name of the head module (e.g. ``"fc"``), or None to find the last Linear.

    Example:
        >>> clf = Classifier(model)
        >>> feats, logits = clf.features_and_logits(x)
    """

    def __init__(self, module: nn.Module, head: str | None = None) -> None:
        if isinstance(module, Classifier):
            raise TypeError("module is already a Classifier; use it directly")
        if not isinstance(module, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.head_name, self.head = self._find_head(module, head)
        self._num_classes: int | None = self.head.out_features if isinstance(self.head, nn.Linear) else None

    @staticmethod
    def _find_head(module: nn.Module, head: str | None) -> tuple[str | None, nn.Module | None]:
        named = dict(module.named_modules())
        if head is not None:
            if head not in named:
                raise InputError(f"model has no submodule named {head!r}; pass head= one of its module names")
            return head, named[head]
        last: tuple[str | None, nn.Module | None] = (None, None)
        for name, sub in named.items():
            if isinstance(sub, nn.Linear):
                last = (name, sub)
        return last

    # ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return device_of(self.module)

    @property
    def num_classes(self) -> int:
        """K, from the head's ``out_features`` (or from the first forward pass when no Linear head)."""
        if self._num_classes is None:
            raise InputError("number of classes unknown: run logits() once or pass head= naming a Linear layer")
        return self._num_classes

    @property
    def head_weight(self) -> torch.Tensor:
        """The head's weight ``(K, D)`` (detached)."""
        return self._linear_head().weight.detach()

    @property
    def head_bias(self) -> torch.Tensor:
        """The head's bias ``(K,)`` (zeros when the head has none)."""
        head = self._linear_head()
        if head.bias is None:
            return torch.zeros(head.out_features, device=head.weight.device, dtype=head.weight.dtype)
        return head.bias.detach()

    def _linear_head(self) -> nn.Linear:
        if not isinstance(self.head, nn.Linear):
            raise InputError("this model has no nn.Linear head; pass head= naming its final Linear layer")
        return self.head

    # ----------------------------------------------------------------------------------------
    def _check_logits(self, logits: Any, n: int) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != n:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(
                f"model output must be logits of shape (N, K) with N={n}, got {shape}; "
                "wrap the model so forward() returns one logits tensor"
            )
        if self._num_classes is None:
            self._num_classes = int(logits.shape[1])
        elif logits.shape[1] != self._num_classes:
            raise InputError(f"model returned {logits.shape[1]} logits but its head has {self._num_classes} outputs")
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` for inputs ``x``; gradients flow if the caller enables them."""
        return self._check_logits(self.module(x), x.shape[0])

    __call__ = logits

    def features_and_logits(self, x: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``(N, D)`` (the head's input, flattened) and logits ``(N, K)``.

        One forward pass, in eval mode (dropout off, batch-norm running statistics used, the global
        random generator untouched) unless ``train`` is True, which runs the model in whatever mode
        it is in. The model's modes are restored and the hook that captures the features is
        removed before the call returns, also when the forward pass raises.

        Args:
            x: inputs ``(N, ...)`` on the model's device.
            train: run in the model's current mode instead of eval mode (e.g. for MC dropout).
        """
        if self.head is None:
            raise InputError("cannot read features: no nn.Linear head found; pass head= naming the final layer")
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            captured.append(inputs[0])

        handle = self.head.register_forward_pre_hook(hook)
        try:
            with eval_mode(self.module, enabled=not train):
                logits = self.logits(x)
        finally:
            handle.remove()
        if not captured:
            raise InputError("the head was not called during the forward pass; pass head= naming the final layer")
        feats = captured[-1]
        return feats.reshape(feats.shape[0], -1), logits

    def __repr__(self) -> str:
        return f"Classifier({type(self.module).__name__}, head={self.head_name!r})"


ModelLike: TypeAlias = nn.Module | Classifier
"""What every public function that takes a model accepts: a plain ``nn.Module`` or a :class:`Classifier`."""


def as_classifier(model: ModelLike) -> Classifier:
    """Wrap a plain ``nn.Module`` (a :class:`Classifier` passes through unchanged)."""
    return model if isinstance(model, Classifier) else Classifier(model)
