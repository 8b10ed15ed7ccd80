"""One batched forward pass that returns logits and features together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlsafety.core._errors import InputError
from mlsafety.core._model import ModelLike, as_classifier, frozen
from mlsafety.core._progress import Progress, track
from mlsafety.core._text import TextBatch, Texts


@dataclass(frozen=True)
class Outputs:
    """What one forward pass over a set of inputs gives: logits ``(N, K)``, features ``(N, D)``.

    ``features`` is None when the model has no head (no layer with weights produces the logits; see
    :meth:`~mlsafety.core.Classifier.trace`). Tensors live on the model's device.
    ``truncated`` counts the texts cut at the model's maximum length (0 for images).
    """

    logits: torch.Tensor
    features: torch.Tensor | None
    truncated: int = 0

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


def forward(
    model: ModelLike,
    x: torch.Tensor | Texts | TextBatch | Sequence[str],
    batch_size: int = 256,
    features: bool = True,
    progress: Progress | None = None,
) -> Outputs:
    """Logits (and features, from the same pass) for ``x`` in batches, in eval mode, no gradients.

    Logits that are not finite raise :class:`InputError` (a metric computed from them would be
    meaningless, and the error would otherwise surface later as a misleading one about inputs).

    Args:
        model: the classifier.
        x: inputs (N, ...) on any device (batches move to the model's device); or, for a text model,
            texts (tokenised per batch by the classifier, padded to each batch's longest; batches
            are formed from texts of similar length, the outputs keep the order of ``x``) or a
            ``TextBatch``.
        batch_size: inputs per forward pass.
        features: also capture the head's input features.
        progress: show progress when given.
    """
    clf = as_classifier(model)
    if not isinstance(x, (torch.Tensor, TextBatch)):
        x = Texts(x)
    want_feats = features and (clf.head is not None or clf.head_info is None)  # untraced: the first batch traces
    logits, feats = [], []
    device = clf.device
    order: torch.Tensor | None = None
    if isinstance(x, Texts) and len(x) > batch_size:  # batch texts of like length: less padding to compute
        order = torch.tensor(sorted(range(len(x)), key=lambda i: len(x[i])), dtype=torch.long)
        x = x[order]
    n = len(x)
    starts = range(0, n, batch_size)
    truncated = 0
    with frozen(clf.module), torch.inference_mode():
        for start in track(starts, progress, "forward", total=len(starts)):
            xb: torch.Tensor | TextBatch
            if isinstance(x, Texts):
                xb = clf.encode(x[start : start + batch_size]).to(device)
            else:
                xb = x[start : start + batch_size].to(device)
            if isinstance(xb, TextBatch):
                truncated += int(xb.truncated.sum())
            if want_feats:
                fb, lb = clf.maybe_features_and_logits(xb)  # traces the head on the first batch
                if fb is None:  # tracing found no layer with weights that gives the logits
                    want_feats = False
                else:
                    feats.append(fb)
            else:
                lb = clf.logits(xb)
            logits.append(lb)
    if not logits:
        k = clf.num_classes
        return Outputs(torch.empty(0, k, device=device), None)
    out = torch.cat(logits)
    feat = torch.cat(feats) if want_feats else None
    if order is not None:  # back to the caller's order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        inverse = inverse.to(out.device)
        out = out[inverse]
        feat = None if feat is None else feat[inverse]
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise InputError(
            f"the model returned NaN or infinite logits for {int(bad.sum())} of {out.shape[0]} inputs "
            f"(the first at index {first}); fix the model before measuring it"
        )
    return Outputs(out, feat, truncated)
