"""Streaming test-time adaptation: batches arrive one after another and the adaptation state
(TENT's updated affine parameters and optimiser moments) is carried forward, as deployed TTA does
(Wang et al. 2021, "Tent: Fully Test-Time Adaptation by Entropy Minimization", online setting)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mlsafety.core import InputError, ModelLike, as_classifier, frozen
from mlsafety.robustness.tta.base import TTAMethod, TTAState, adaptation_mode, check_batch


class Stream:
    """An adaptation session over a stream of test batches: ``stream(x) -> logits`` per batch.

    The model is never changed; the adapted state lives in ``state_`` (a :class:`TTAState`).
    Statistics-only methods (TeBN, alpha-BN, MedBN) normalise every batch with its own statistics,
    so their stream is memoryless; gradient methods (TENT, pseudo-labels) start each batch from the
    parameters and optimiser moments the previous batch left. :meth:`reset` starts over.

    Example:
        >>> stream = Stream(create("tent"), model)
        >>> preds = [stream(xb).argmax(1) for xb in batches]
    """

    def __init__(self, method: TTAMethod, model: ModelLike) -> None:
        self.method = method
        self.clf = as_classifier(model)
        self.state_: TTAState | None = None
        self.batches_ = 0

    def reset(self) -> Stream:
        """Forget the adapted state (the next batch starts from the model's own parameters)."""
        self.state_, self.batches_ = None, 0
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on the next batch ``x`` (B >= 2, in [0, 1]) and return its logits (B, K)."""
        check_batch(x)
        with frozen(self.clf.module), adaptation_mode():
            x0 = x.detach().to(self.clf.device).clone()  # a normal tensor even when x was made under inference mode
            state = self.method.init_state(self.clf) if self.state_ is None else self.state_
            logits, new = self.method.step(self.clf, x0, state)
        self.state_ = new.detached()
        self.batches_ += 1
        return logits.detach()

    step = __call__

    def run(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Logits of every batch in order, concatenated ``(sum B, K)``."""
        out = [self(xb) for xb in batches]
        if not out:
            raise InputError("the stream got no batches; give at least one")
        return torch.cat(out)
