"""Token-level saliency for models whose input goes through an embedding layer.

Text models take integer token ids, which have no gradient; the gradient of the target logit with
respect to each token's *embedding* does (Li et al., "Visualizing and Understanding Neural Models in
NLP", 2016; Denil et al. 2014). Two reductions per token: the gradient's L2 norm (``norm``) and the
dot product of gradient and embedding (``grad-x-input``, the first-order contribution of the token).
"""

from __future__ import annotations

import torch
from torch import nn

from mlsafety.core import InputError, ModelLike, as_classifier, frozen
from mlsafety.monitoring.transparency.base import Target, resolve_target

REDUCTIONS = ("norm", "grad-x-input")


def find_embedding(model: nn.Module, name: str | None = None) -> nn.Module:
    """The submodule ``name``, or the model's first ``nn.Embedding`` (or ``nn.EmbeddingBag``)."""
    named = dict(model.named_modules())
    if name is not None:
        if name not in named:
            raise InputError(f"model has no submodule named {name!r}; pass embedding= one of its module names")
        return named[name]
    for module in named.values():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            return module
    raise InputError("model has no nn.Embedding layer; pass embedding= naming the layer that embeds the tokens")


def token_saliency(
    model: ModelLike,
    tokens: torch.Tensor,
    target: Target,
    embedding: str | None = None,
    reduce: str = "norm",
) -> torch.Tensor:
    """Saliency of each token (N, L) for the logit of class ``target``.

    Args:
        model: a classifier whose forward takes token ids (N, L) and returns logits (N, K).
        tokens: integer token ids (N, L).
        target: class index for all inputs or one per input (N,).
        embedding: name of the embedding submodule (default: the first ``nn.Embedding``). Its output
            must be (N, L, D).
        reduce: ``norm`` (L2 norm of the gradient) or ``grad-x-input`` (gradient . embedding).

    The forward hook on the embedding layer is removed before returning, also on error.
    """
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    if tokens.is_floating_point() or tokens.ndim != 2:
        raise InputError(f"tokens must be integer ids of shape (N, L), got {tokens.dtype} {tuple(tokens.shape)}")
    clf = as_classifier(model)
    layer = find_embedding(clf.module, embedding)
    device = clf.device
    tgt = resolve_target(target, tokens.shape[0], device)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with frozen(clf.module), torch.enable_grad():
            logits = clf.logits(tokens.to(device))
            if not captured:
                raise InputError("the embedding layer was not called in the forward pass")
            emb = captured[-1]
            (grad,) = torch.autograd.grad(logits.gather(1, tgt[:, None]).sum(), emb)
    finally:
        handle.remove()
    if emb.ndim != 3 or emb.shape[:2] != tokens.shape:
        raise InputError(f"embedding output must be (N, L, D) for tokens {tuple(tokens.shape)}, got {tuple(emb.shape)}")
    out = grad.norm(dim=-1) if reduce == "norm" else (grad * emb.detach()).sum(dim=-1)
    return out.detach().to(tokens.device)
