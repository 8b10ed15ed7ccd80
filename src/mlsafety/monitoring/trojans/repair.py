"""Trojan repair: remove a backdoor with a small clean set, keeping clean accuracy.

* :func:`fine_pruning` (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring
  Attacks on Deep Neural Networks", 2018): prune the last convolution's channels that are dormant
  on clean data, as many as clean accuracy allows, then fine-tune on the clean set.
* :func:`nc_unlearning` (Neural Cleanse, Wang et al. 2019, section VI-C): fine-tune on the clean
  set with the recovered trigger stamped on a share of the inputs, labels kept true, so the
  model unlearns the trigger; optionally in rounds that reverse-engineer the target again.
* :func:`nc_pruning` (Neural Cleanse, section VI-B): prune the penultimate neurons that the
  recovered trigger excites most (relative to clean inputs) until the trigger stops working.

Every function returns a repaired copy; the model passed in is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune

from mlsafety.core import (
    ArrayDataset,
    DataLike,
    InputError,
    as_array_dataset,
    as_classifier,
    device_of,
    forward,
    frozen,
    generator,
    random_shift,
    train,
)


@dataclass
class Repaired:
    """A repaired copy of a model and what was done to it.

    Attributes:
        model: the repaired model (eval mode); the original is untouched.
        method: ``fine-pruning``, ``nc-unlearning`` or ``nc-pruning``.
        layer: the pruned layer's name (pruning methods).
        pruned: indices of the pruned channels.
        clean_accuracy: accuracy on the repair set after repair.
    """

    model: nn.Module
    method: str
    layer: str | None = None
    pruned: list[int] = field(default_factory=list)
    clean_accuracy: float = float("nan")


def last_conv(model: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` in ``model``."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    if name is None:
        raise InputError("pruning needs an nn.Conv2d layer; this model has none (pass layer=)")
    return name


def _conv(model: nn.Module, layer: str | None) -> tuple[str, nn.Conv2d]:
    name = layer or last_conv(model)
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Conv2d):
        raise InputError(f"layer {name!r} is not an nn.Conv2d of this model")
    return name, module


_BLOCK_TAIL = (_BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)
"""Modules that may follow a convolution inside its block (normalisation, activation), channel for channel."""


def _block_tail(model: nn.Module, layer: nn.Conv2d, x: torch.Tensor) -> list[nn.Module]:
    """The modules run right after ``layer`` that are :data:`_BLOCK_TAIL` modules keeping its output shape and
    run once per pass (its block's normalisation and activation, channel for channel), in call order."""
    order: list[tuple[nn.Module, tuple[int, ...]]] = []

    def hook(m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            order.append((m, tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        forward(model, x[:1], 1, features=False)
    finally:
        for h in handles:
            h.remove()
    at = next((i for i, (m, _) in enumerate(order) if m is layer), None)
    if at is None:
        raise InputError(
            f"the convolution to prune ({layer}) is not run by the model's forward pass: name one the model uses"
        )
    tail: list[nn.Module] = []
    shape = order[at][1]
    for m, out_shape in order[at + 1 :]:
        calls = sum(m is other for other, _ in order)  # a module reused elsewhere (one shared ReLU) would mix maps
        if not isinstance(m, _BLOCK_TAIL) or out_shape != shape or calls > 1:
            break
        tail.append(m)
    return tail


def _block_output(model: nn.Module, layer: nn.Conv2d, x: torch.Tensor) -> nn.Module:
    """The module whose output is ``layer``'s channels after its block's normalisation and activation: the
    last module of :func:`_block_tail` (``layer`` itself when none follows)."""
    tail = _block_tail(model, layer, x)
    return tail[-1] if tail else layer


def _norms(model: nn.Module, layer: nn.Conv2d, x: torch.Tensor) -> list[_BatchNorm]:
    """The batch norms with a scale and shift in ``layer``'s block tail: a channel is silenced after them only
    when they are zeroed too (a zeroed filter alone leaves the shift ``beta - gamma mu / sigma``)."""
    return [m for m in _block_tail(model, layer, x) if isinstance(m, _BatchNorm) and m.affine]


def channel_activation(model: nn.Module, layer: nn.Conv2d, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Mean post-ReLU activation (C,) of each output channel of ``layer`` over inputs ``x``.

    The channels are read after the normalisation and activation modules that follow ``layer`` in its
    block (convolution, batch norm, ReLU): a channel dormant after batch norm can be busy before it.
    """
    total: list[torch.Tensor] = []
    handle = _block_output(model, layer, x).register_forward_hook(
        lambda _m, _i, out: total.append(out.clamp_min(0).mean(dim=(0, 2, 3)) * out.shape[0])
    )
    try:
        forward(model, x, batch_size, features=False)
    finally:
        handle.remove()
    return torch.stack(total).sum(dim=0) / x.shape[0]


def _accuracy(model: nn.Module, data: ArrayDataset) -> float:
    out = forward(model, data.x, features=False)
    return float((out.pred.cpu() == data.y).float().mean())


def _prune_channels(layer: nn.Conv2d | _BatchNorm, channels: list[int]) -> None:
    """Zero ``channels`` of ``layer`` (a convolution or a batch norm) with a pruning mask (kept zero during
    fine-tuning)."""
    mask_w = torch.ones_like(layer.weight)
    mask_w[channels] = 0
    prune.custom_from_mask(layer, "weight", mask_w)
    if layer.bias is not None:
        mask_b = torch.ones_like(layer.bias)
        mask_b[channels] = 0
        prune.custom_from_mask(layer, "bias", mask_b)


def _make_permanent(layer: nn.Conv2d | _BatchNorm) -> None:
    prune.remove(layer, "weight")
    if layer.bias is not None:
        prune.remove(layer, "bias")


def _copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(as_classifier(model).module)
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone.eval()


def fine_pruning(
    model: nn.Module,
    clean: DataLike,
    layer: str | None = None,
    max_drop: float = 0.05,
    step: int = 1,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> Repaired:
    """Fine-pruning: prune dormant channels of the last convolution, then fine-tune on ``clean``.

    Channels are pruned in increasing order of their mean activation on ``clean``, ``step`` at a
    time, while accuracy on ``clean`` stays within ``max_drop`` of the original (the paper's stop
    rule); fine-tuning then recovers accuracy with the pruned channels held at zero. A pruned channel
    is removed as a neuron: its filter is zeroed, and so are the scale and shift of a batch norm that
    follows the convolution in its block (else the channel would still give the constant shift).

    Args:
        model: the suspected model (not modified).
        clean: the defender's clean labelled data (pruning decisions and fine-tuning), any form of
            :data:`mlsafety.core.DataLike`.
        layer: the convolution to prune (default: the last ``nn.Conv2d``).
        max_drop: largest accuracy drop accepted while pruning.
        step: channels pruned per trial.
        epochs: fine-tuning epochs (Adam, the shared training loop :func:`mlsafety.core.train`).
        lr: fine-tuning learning rate.
        seed: fine-tuning seed.
    """
    clean = as_array_dataset(clean, "clean")
    net = _copy(model)
    name, conv = _conv(net, layer)
    base = _accuracy(net, clean)
    order = channel_activation(net, conv, clean.x).argsort().tolist()
    pruned: list[nn.Conv2d | _BatchNorm] = [conv, *_norms(net, conv, clean.x)]
    state = copy.deepcopy(net.state_dict())
    kept: list[int] = []
    for n in range(step, len(order), step):
        trial = order[:n]
        with torch.no_grad():
            for m in pruned:
                m.weight[trial] = 0
                if m.bias is not None:
                    m.bias[trial] = 0
        if _accuracy(net, clean) < base - max_drop:
            break
        kept = trial
    net.load_state_dict(state)
    if kept:
        for m in pruned:
            _prune_channels(m, kept)
    train(net, clean, epochs=epochs, lr=lr, seed=seed, augment=random_shift)
    if kept:
        for m in pruned:
            _make_permanent(m)
    return Repaired(net.eval(), "fine-pruning", name, sorted(kept), _accuracy(net, clean))


def nc_unlearning(
    model: nn.Module,
    clean: DataLike,
    apply_trigger: Callable[[torch.Tensor], torch.Tensor],
    rate: float = 0.2,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    rounds: int = 1,
    target: int | None = None,
) -> Repaired:
    """Unlearning: fine-tune on ``clean`` with the (recovered) trigger on ``rate`` of each batch, true labels.

    With ``rounds > 1`` the repair iterates: after each round, Neural Cleanse's reverse engineering
    is run again for ``target`` on the repaired model, and the trigger it finds joins the triggers
    being unlearned (each triggered input gets one of them). A recovered trigger is often only
    part of the planted one (a few of its pixels); the later rounds find what the first left.

    Args:
        model: the suspected model (not modified).
        clean: clean labelled data (any form of :data:`mlsafety.core.DataLike`).
        apply_trigger: the recovered trigger (e.g. ``Trigger.apply_trigger`` from Neural Cleanse).
        rate: share of each batch that carries a trigger (20% in the paper).
        epochs: fine-tuning epochs per round.
        lr: learning rate.
        seed: seed of the batches, of which inputs carry a trigger, and of the reverse engineering.
        rounds: unlearning rounds (1 = the paper's single pass).
        target: the trigger's target class (needed when ``rounds > 1``).
    """
    from mlsafety.monitoring.trojans.scanners.neural_cleanse import reverse_engineer

    clean = as_array_dataset(clean, "clean")
    if not 0.0 < rate < 1.0:
        raise InputError(f"unlearning rate must lie in (0, 1), got {rate}")
    if rounds < 1 or (rounds > 1 and target is None):
        raise InputError("nc_unlearning needs rounds >= 1, and target= when rounds > 1")
    net = _copy(model)
    triggers: list[Callable[[torch.Tensor], torch.Tensor]] = [apply_trigger]

    def augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = random_shift(xb, g)
        pick = (torch.rand(xb.shape[0], generator=g) < rate).nonzero().flatten()
        if len(pick):
            xb = xb.clone()
            which = torch.randint(0, len(triggers), (len(pick),), generator=g)
            for k, fn in enumerate(triggers):
                rows = pick[which == k].to(xb.device)
                if len(rows):
                    xb[rows] = fn(xb[rows])
        return xb

    for r in range(rounds):
        if r > 0:
            assert target is not None
            with frozen(net):
                found = reverse_engineer(
                    as_classifier(net), clean.x.to(device_of(net)), [target], generator(seed, "unlearn", r)
                )
            triggers.append(found[0].apply_trigger)
        train(net, clean, epochs=epochs, lr=lr, seed=seed + r, augment=augment)
    return Repaired(net.eval(), "nc-unlearning", clean_accuracy=_accuracy(net, clean))


def nc_pruning(
    model: nn.Module,
    clean: DataLike,
    apply_trigger: Callable[[torch.Tensor], torch.Tensor],
    target: int,
    max_asr: float = 0.05,
    max_drop: float = 0.05,
) -> Repaired:
    """Prune the penultimate neurons most excited by the trigger until its success rate falls below ``max_asr``.

    As in the paper, neurons of the second-to-last layer (the head's input features) are ranked by
    mean activation on triggered minus clean inputs and pruned (their head weights zeroed) one at
    a time; pruning stops when the trigger's success rate on ``clean`` (inputs of other classes)
    is at most ``max_asr``, or before accuracy drops by more than ``max_drop``. No fine-tuning.

    Args:
        model: the suspected model (not modified); it needs an ``nn.Linear`` head.
        clean: clean labelled data (any form of :data:`mlsafety.core.DataLike`).
        apply_trigger: the recovered trigger.
        target: the trigger's target class.
        max_asr: success rate at which pruning stops.
        max_drop: largest accuracy drop accepted.
    """
    clean = as_array_dataset(clean, "clean")
    net = _copy(model)
    clf = as_classifier(net)
    other = clean.y != target
    if not bool(other.any()):
        raise InputError(f"the clean set holds only class {target}; give inputs of other classes")
    x_trig = apply_trigger(clean.x[other])
    base = _accuracy(net, clean)
    f_trig, f_clean = forward(clf, x_trig).features, forward(clf, clean.x).features  # the first pass traces the head
    head = clf.head
    weight = getattr(head, "weight", None)
    if f_trig is None or f_clean is None or not isinstance(weight, torch.Tensor) or not clf.head_is_affine:
        raise InputError("nc-pruning zeroes the head's weights of excited features: the model needs a Linear (or 1x1 "
                         "convolution) head whose input are its features")  # fmt: skip
    order = (f_trig.mean(dim=0) - f_clean.mean(dim=0)).argsort(descending=True).tolist()
    pruned: list[int] = []
    with frozen(net), torch.no_grad():
        for j in order[:-1]:
            saved = weight[:, j].clone()
            weight[:, j] = 0
            if _accuracy(net, clean) < base - max_drop:
                weight[:, j] = saved
                break
            pruned.append(j)
            asr = float((forward(net, x_trig, features=False).pred.cpu() == target).float().mean())
            if asr <= max_asr:
                break
    return Repaired(net.eval(), "nc-pruning", clf.head_name, sorted(pruned), _accuracy(net, clean))
