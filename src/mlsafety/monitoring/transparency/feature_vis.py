"""Feature visualisation by activation maximisation (Olah, Mordvintsev & Schubert, "Feature
Visualization", Distill 2017; the parameterisation of the Lucid library).

The image is optimised to maximise a class logit or the mean activation of one channel of a layer.
It is parameterised in the Fourier domain with a 1/f spectrum scaling (so low frequencies dominate)
and, for three-channel images, in decorrelated colour space, then squashed to [0, 1] by a sigmoid.
Random jitter, scale and rotation at every step keep high-frequency adversarial patterns out.
Unlike the best-known implementation, every hook this module registers is removed before it
returns, also when the optimisation raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import InputError, ModelLike, as_classifier, frozen, rand_like, randn_like
from mlsafety.core import generator as make_generator

# Square root of the colour correlation of ImageNet (from Lucid), columns scaled to unit max norm.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


@dataclass(frozen=True)
class ChannelObjective:
    """Maximise the mean activation of ``channel`` in the output of submodule ``layer``."""

    layer: str
    channel: int


Objective = int | Sequence[int] | ChannelObjective
"""A class index (maximise its logit), several (one image each, optimised together), or a
:class:`ChannelObjective`."""


class ImageParam(nn.Module):
    """Learnable images (batch, C, H, W) in [0, 1].

    Args:
        shape: (C, H, W).
        batch: number of images.
        fft: parameterise by a 1/f-scaled Fourier spectrum (else plain pixels).
        decorrelate: for C == 3, optimise in decorrelated colour space.
        generator: source of the small random initialisation.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        fft: bool = True,
        decorrelate: bool = True,
        generator: torch.Generator | None = None,
        batch: int = 1,
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.fft = fft
        self.decorrelate = decorrelate and c == 3
        if fft:
            fy = torch.fft.fftfreq(h)[:, None]
            fx = torch.fft.rfftfreq(w)[None, :]
            freqs = (fy * fy + fx * fx).sqrt()
            # Lucid scales by sqrt(h w) and inverts with TensorFlow's irfft2d (which divides by h w):
            # together the orthonormal inverse ("ortho") of the 1/f-scaled spectrum, written so here.
            self.register_buffer("scale", 1.0 / freqs.clamp_min(1.0 / max(h, w)))
            init = torch.empty(2, batch, c, h, w // 2 + 1)
        else:
            init = torch.empty(1, batch, c, h, w)
        self.spectrum = nn.Parameter(randn_like(init, generator) * 0.01)

    def forward(self) -> torch.Tensor:
        _, h, w = self.shape
        if self.fft:
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            spec = torch.complex(self.spectrum[0], self.spectrum[1]) * scale
            img = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0
        else:
            img = self.spectrum[0]
        if self.decorrelate:
            img = torch.einsum("nchw,dc->ndhw", img, _COLOR.to(img.device, img.dtype))
        return torch.sigmoid(img)


class _Adam:
    """Adam (Kingma & Ba 2015) on a few tensors; torch.optim's first use imports the compiler stack (seconds)."""

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = params
        self.lr = lr
        self.betas = betas
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        b1, b2 = self.betas
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))


def random_transform(
    img: torch.Tensor, g: torch.Generator, jitter: int = 1, scale: float = 0.1, degrees: float = 10.0
) -> torch.Tensor:
    """Random jitter (up to ``jitter`` pixels), scale (factor in ``1 +- scale``) and rotation (up to
    ``degrees``) with one differentiable affine warp, reflecting at the borders."""
    n, _, h, w = img.shape
    u = rand_like(torch.empty(n, 4, device=img.device), g) * 2 - 1
    s = 1 + scale * u[:, 0]
    a = math.radians(degrees) * u[:, 1]
    tx, ty = jitter * 2 / w * u[:, 2], jitter * 2 / h * u[:, 3]
    theta = torch.stack(
        [torch.stack([a.cos() / s, -a.sin() / s, tx], 1), torch.stack([a.sin() / s, a.cos() / s, ty], 1)], 1
    ).to(img.dtype)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, padding_mode="reflection", align_corners=False)


def visualize(
    model: ModelLike,
    objective: Objective,
    shape: tuple[int, int, int],
    steps: int = 256,
    lr: float = 0.05,
    fft: bool = True,
    decorrelate: bool = True,
    jitter: int = 1,
    scale: float = 0.1,
    degrees: float = 10.0,
    transforms: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] that maximise ``objective`` (B = number of classes given, else 1).

    Args:
        model: the classifier (left unchanged: mode, flags, weights and hooks restored).
        objective: class index, or :class:`ChannelObjective` for a channel of a named layer.
        shape: image shape (C, H, W) the model takes.
        steps: Adam steps.
        lr: Adam learning rate.
        fft: Fourier parameterisation (else pixels).
        decorrelate: decorrelated colour space for three-channel images.
        jitter: maximum translation in pixels per step.
        scale: maximum relative zoom per step.
        degrees: maximum rotation per step.
        transforms: randomly transformed copies averaged in each step.
        generator: source of the initialisation and the transforms (default: one seeded from 0
            and the objective).
    """
    clf = as_classifier(model)
    if steps < 1 or transforms < 1:
        raise InputError("steps and transforms must be at least 1")
    device = clf.device
    g = generator if generator is not None else make_generator(0, "feature-vis", str(objective))
    classes: list[int] = []
    if not isinstance(objective, ChannelObjective):
        classes = [int(objective)] if isinstance(objective, int) else [int(c) for c in objective]
        if not classes or not all(0 <= c < clf.num_classes for c in classes):
            raise InputError(f"classes {classes} must be non-empty and inside [0, {clf.num_classes})")
    n_img = max(1, len(classes))
    param = ImageParam(shape, fft=fft, decorrelate=decorrelate, generator=g, batch=n_img).to(device)
    opt = _Adam(list(param.parameters()), lr=lr)
    captured: list[torch.Tensor] = []
    handle = None
    if isinstance(objective, ChannelObjective):
        named = dict(clf.module.named_modules())
        if objective.layer not in named:
            raise InputError(f"model has no submodule named {objective.layer!r}")

        def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            captured.append(out)

        handle = named[objective.layer].register_forward_hook(hook)
    try:
        with frozen(clf.module), torch.enable_grad():
            for _ in range(steps):
                img = param().repeat(transforms, 1, 1, 1)
                batch = random_transform(img, g, jitter, scale, degrees)
                captured.clear()
                logits = clf.logits(batch)
                if isinstance(objective, ChannelObjective):
                    act = captured[-1]
                    if act.ndim < 2 or not 0 <= objective.channel < act.shape[1]:
                        raise InputError(f"layer {objective.layer!r} has no channel {objective.channel}")
                    value = act[:, objective.channel].mean()
                else:
                    idx = torch.tensor(classes * transforms, device=device)
                    value = logits.gather(1, idx[:, None]).sum() / transforms
                opt.step(torch.autograd.grad(-value, opt.params))
    finally:
        if handle is not None:
            handle.remove()
    with torch.no_grad():
        return param().detach()
