"""PixMix with procedurally generated mixing pictures (Hendrycks et al., "PixMix: Dreamlike Pictures
Comprehensively Improve Safety Measures", 2022).

PixMix mixes training images with pictures of fractals and feature visualisations. Nothing is
downloaded here, so :func:`mixing_pictures` draws both kinds: iterated-function-system fractals
rendered by the chaos game, and feature-visualisation-like patterns (random Fourier features with a
1/f spectrum through a saturating non-linearity and a random colour mix).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlsafety.core import InputError, Param, unwrap_logits
from mlsafety.core import generator as make_generator
from mlsafety.robustness.augment._ops import OPS, random_ops
from mlsafety.robustness.augment.base import Augmentation, numpy_rng, register_augmentation

_RENDER = 4  # fractals are rendered at this multiple of the target size, then area-averaged


def fractals(
    n: int, shape: tuple[int, int, int], g: torch.Generator, points: int = 1024, steps: int = 16
) -> torch.Tensor:
    """``n`` IFS fractals (n, C, H, W) in [0, 1]: 2-4 random contractive affine maps, chaos game.

    Each picture has its own maps (random rotation, anisotropic scale in [0.25, 0.8] and shift) and
    colour; point densities are log-scaled and normalised.
    """
    c, h, w = shape
    rh, rw = h * _RENDER, w * _RENDER
    k = 4
    angle = 2 * math.pi * torch.rand(n, k, generator=g)
    scale = 0.25 + 0.55 * torch.rand(n, k, 2, generator=g)
    shift = torch.rand(n, k, 2, generator=g) * 2 - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([cos * scale[..., 0], -sin * scale[..., 1]], -1),
                     torch.stack([sin * scale[..., 0], cos * scale[..., 1]], -1)], -2)  # (n, k, 2, 2)  # fmt: skip
    used = torch.randint(2, k + 1, (n, 1), generator=g)
    pts = torch.rand(n, points, 2, generator=g) * 2 - 1
    canvas = torch.zeros(n, rh * rw)
    for step in range(steps):
        pick = (torch.rand(n, points, generator=g) * used).long()  # (n, points) in [0, used)
        am = torch.gather(a, 1, pick[..., None, None].expand(n, points, 2, 2))
        bm = torch.gather(shift, 1, pick[..., None].expand(n, points, 2))
        pts = (am @ pts[..., None]).squeeze(-1) + 0.5 * bm
        if step >= 4:  # let the points settle on the attractor first
            lo = pts.amin(dim=1, keepdim=True)
            hi = pts.amax(dim=1, keepdim=True)
            uv = (pts - lo) / (hi - lo).clamp_min(1e-6)
            iy = (uv[..., 1] * (rh - 1)).round().long()
            ix = (uv[..., 0] * (rw - 1)).round().long()
            canvas.scatter_add_(1, iy * rw + ix, torch.ones(n, points))
    dens = torch.log1p(canvas).view(n, 1, rh, rw)
    dens = F.avg_pool2d(dens, _RENDER)
    dens = dens / dens.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    colour = 0.3 + 0.7 * torch.rand(n, c, 1, 1, generator=g)
    return (dens * colour).clamp(0, 1)


def patterns(n: int, shape: tuple[int, int, int], g: torch.Generator, waves: int = 24) -> torch.Tensor:
    """``n`` feature-visualisation-like patterns (n, C, H, W) in [0, 1].

    Sums of ``waves`` plane waves per channel with random directions, frequencies up to a few
    cycles per image, amplitudes falling as 1/f and random phases, through ``tanh`` with a random
    gain, then mixed across channels by a random colour matrix.
    """
    c, h, w = shape
    ys = torch.linspace(-0.5, 0.5, h).view(1, 1, h, 1)
    xs = torch.linspace(-0.5, 0.5, w).view(1, 1, 1, w)
    freq = 0.5 + 5.5 * torch.rand(n, 3 * waves, 1, 1, generator=g)
    theta = 2 * math.pi * torch.rand(n, 3 * waves, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 3 * waves, 1, 1, generator=g)
    wave = torch.sin(2 * math.pi * freq * (torch.cos(theta) * xs + torch.sin(theta) * ys) + phase) / freq
    field = wave.view(n, 3, waves, h, w).sum(dim=2)
    field = field / field.std(dim=(2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    gain = 0.5 + 2.5 * torch.rand(n, 1, 1, 1, generator=g)
    field = torch.tanh(gain * field)
    mix = torch.randn(n, c, 3, generator=g) / math.sqrt(3)
    out = torch.einsum("nij,njhw->nihw", mix, field)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-6)


def picture_generator(seed: int, shape: tuple[int, int, int]) -> torch.Generator:
    """The generator of :class:`PixMix`'s picture bank for ``seed`` and image ``shape``."""
    return make_generator(seed, "pixmix-pictures", *shape)


def mixing_pictures(n: int, shape: tuple[int, int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` mixing pictures (n, C, H, W) on the CPU: half fractals, half patterns, drawn from ``generator``
    (default: :func:`picture_generator` with seed 0)."""
    if n < 1:
        raise InputError(f"pixmix needs at least one mixing picture, got {n}")
    g = generator if generator is not None else picture_generator(0, shape)
    half = n // 2
    return torch.cat([fractals(half, shape, g), patterns(n - half, shape, g)])


def _ab(
    flip: torch.Tensor, beta_b1: torch.Tensor, beta_1b: torch.Tensor, beta_1b_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PixMix's ``get_ab``: (Beta(b, 1), Beta(1, b)) or (1 + Beta(1, b), -Beta(1, b)), half each."""
    return torch.where(flip, beta_b1, 1 + beta_1b), torch.where(flip, beta_1b_2, -beta_1b_2)


def pixmix(
    x: torch.Tensor,
    pictures: torch.Tensor,
    g: torch.Generator,
    k: int = 4,
    beta: float = 3.0,
    severity: float = 3.0,
) -> torch.Tensor:
    """PixMix images: start from the image or an augmented copy, then mix in up to ``k`` times an
    augmented copy or a random mixing picture, by an additive or multiplicative mix.

    Deviation: the reference code draws one mixing picture per image and mixes that same picture in
    at every round that takes a picture; here each such round draws its own picture from the bank.

    Args:
        x: images (N, C, H, W) in [0, 1].
        pictures: mixing pictures (M, C, H, W) in [0, 1].
        g: the generator.
        k: the most mixing rounds (each image draws 0..k).
        beta: the mixing weights' Beta parameter.
        severity: strength of the augmentation operations (AugMix's operations).
    """
    if pictures.shape[1:] != x.shape[1:]:
        raise InputError(f"mixing pictures have shape {tuple(pictures.shape[1:])}, images {tuple(x.shape[1:])}")
    n = x.shape[0]
    rng = numpy_rng(g)

    def augmented() -> torch.Tensor:
        return random_ops(x, torch.randint(0, len(OPS), (n,), generator=g, device=g.device), severity, g)

    def coin() -> torch.Tensor:
        return (torch.rand(n, generator=g, device=g.device) < 0.5).to(x.device).view(-1, 1, 1, 1)

    def draw(p: float, q: float) -> torch.Tensor:
        return torch.as_tensor(rng.beta(p, q, size=n), dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)

    mixed = torch.where(coin(), augmented(), x)
    rounds = torch.randint(0, k + 1, (n,), generator=g, device=g.device).to(x.device).view(-1, 1, 1, 1)
    pics = pictures.to(device=x.device, dtype=x.dtype)
    for step in range(k):
        idx = torch.randint(0, pics.shape[0], (n,), generator=g, device=g.device).to(x.device)
        other = torch.where(coin(), augmented(), pics[idx])
        a, b = _ab(coin(), draw(beta, 1), draw(1, beta), draw(1, beta))
        added = ((a * (mixed * 2 - 1) + b * (other * 2 - 1)) + 1) / 2
        multiplied = ((mixed * 2).clamp_min(1e-37) ** a) * ((other * 2).clamp_min(1e-37) ** b) / 2
        new = torch.where(coin(), added, multiplied).clamp(0, 1)
        mixed = torch.where(step < rounds, new, mixed)
    return mixed


@register_augmentation("pixmix")
class PixMix(Augmentation):
    """PixMix training loss: cross-entropy on PixMix images, with procedural mixing pictures.

    The mixing pictures are made once per image shape and kept.
    """

    pictures = Param(256, int, low=1, doc="how many mixing pictures to make (per image shape)")
    k = Param(4, int, low=1, doc="the most mixing rounds")
    beta = Param(3.0, float, low=0, low_open=True, doc="Beta parameter of the mixing weights")
    severity = Param(3.0, float, low=0, low_open=True, doc="augmentation strength")
    seed = Param(0, int, doc="seed of the mixing pictures")

    def __post_init__(self) -> None:
        self._bank: dict[tuple[int, ...], torch.Tensor] = {}

    def bank(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The mixing pictures for images of ``shape`` (made on first use)."""
        if shape not in self._bank:
            self._bank[shape] = mixing_pictures(self.pictures, shape, picture_generator(self.seed, shape))
        return self._bank[shape]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        mixed = pixmix(x, self.bank(shape), generator, self.k, self.beta, self.severity)
        return F.cross_entropy(unwrap_logits(model(mixed)), y)
