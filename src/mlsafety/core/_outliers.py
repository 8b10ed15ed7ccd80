"""Synthetic outliers made from in-distribution inputs: two recipes for images, one for text.

Tuning a detector or choosing a monitor on the OOD sets it is then evaluated on overstates how well
it works (Hsu et al., "Generalized ODIN: Detecting Out-of-distribution Image without Learning from
Out-of-distribution Data", CVPR 2020; Yang et al., "OpenOOD: Benchmarking Generalized
Out-of-Distribution Detection", NeurIPS 2022 Datasets and Benchmarks, which select on held-out
data only). Both recipes below make outliers from the in-distribution inputs themselves, by
transforms that destroy what makes an image in-distribution while keeping its pixel statistics
close; none of them is one of the audit's hazards (corruptions, attacks, OOD sets). The transforms
are this library's choice, not a published benchmark's.

=====================================  ================================================================
recipe                                 what it makes, who uses it
=====================================  ================================================================
:func:`permute_noise_mosaic_outliers`  images in, images out, one per input in thirds: pixels
                                       permuted, blended with Gaussian noise, quadrant mosaics of four
                                       images. Tuning detectors (``monitoring.ood.tune``) and the
                                       auxiliary set of outlier exposure (Hendrycks, Mazeika &
                                       Dietterich, "Deep Anomaly Detection with Outlier Exposure",
                                       ICLR 2019).
:func:`transform_mix_outliers`         a labelled dataset (``y = -1``) of ``n`` outliers in equal
                                       shares of :data:`OUTLIER_TRANSFORMS` (pixel shuffle, blend of
                                       two images, photometric negative, uniform-noise blend) applied
                                       to inputs drawn with replacement. Choosing the monitor of the
                                       defence-in-depth evaluation (``mlsafety.systemic``).
:func:`word_shuffle_outliers`          the text counterpart of the one above: texts with their words
                                       in a seeded random order (the vocabulary stays in
                                       distribution, the sentence does not), for the same choice.
=====================================  ================================================================

Each recipe is deterministic given its CPU generator; the draws, and so the outliers, differ
between the two, which is why they have two names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlsafety.core._data import ArrayDataset, check_images
from mlsafety.core._errors import InputError
from mlsafety.core._random import rand_like, randn_like
from mlsafety.core._text import TextDataset, Texts


def permute_noise_mosaic_outliers(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Outliers made from in-distribution images ``x`` (N, C, H, W), one per input: a third with
    their pixels permuted (per image, the same permutation across its channels), a third blended
    half-half with Gaussian noise, a third as mosaics of four quadrants from four images drawn at
    random. Input ``i`` goes to part ``i % 3``.

    Args:
        x: images in [0, 1].
        generator: CPU generator for every random choice.

    Returns:
        Same shape as ``x``, in [0, 1], on ``x``'s device.
    """
    check_images(x)
    n, _, h, w = x.shape
    parts = torch.arange(n) % 3
    out = x.clone()
    # 1. pixel permutations (one permutation per image, shared by its channels)
    idx = (parts == 0).nonzero()[:, 0].to(x.device)
    if len(idx):
        out[idx] = _pixel_shuffle(x[idx], generator)
    # 2. heavy noise
    idx = (parts == 1).nonzero()[:, 0].to(x.device)
    if len(idx):
        noise = randn_like(x[idx], generator)
        out[idx] = (0.5 * x[idx] + 0.5 * (0.5 + 0.5 * noise)).clamp(0, 1)
    # 3. quadrant mosaics
    idx = (parts == 2).nonzero()[:, 0]
    if len(idx):
        donors = torch.randint(0, n, (len(idx), 4), generator=generator).to(x.device)
        hh, ww = h // 2, w // 2
        mosaic = x[donors[:, 0]].clone()
        mosaic[:, :, :hh, ww:] = x[donors[:, 1]][:, :, :hh, ww:]
        mosaic[:, :, hh:, :ww] = x[donors[:, 2]][:, :, hh:, :ww]
        mosaic[:, :, hh:, ww:] = x[donors[:, 3]][:, :, hh:, ww:]
        out[idx.to(x.device)] = mosaic
    return out


def _pixel_shuffle(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's pixel positions permuted at random (same permutation across its channels)."""
    n, c, h, w = x.shape
    order = rand_like(torch.empty(n, h * w, device=x.device), g).argsort(dim=1)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def _blend(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two different inputs averaged: a superposition of two objects (mixup at 1/2, Zhang et al.,
    "mixup: Beyond Empirical Risk Minimization", ICLR 2018, without mixing the labels)."""
    shift = 1 + int(torch.randint(0, max(1, x.shape[0] - 1), (1,), generator=g))
    return 0.5 * (x + x.roll(shift, dims=0))


def _invert(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Photometric negative ``1 - x`` (Hosseini et al., "On the Limitation of Convolutional Neural
    Networks in Recognizing Negative Images", ICMLA 2017)."""
    return 1.0 - x


def _noise_blend(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Half the input, half uniform noise."""
    return 0.5 * x + 0.5 * rand_like(x, g)


OUTLIER_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "pixel-shuffle": _pixel_shuffle,
    "blend": _blend,
    "invert": _invert,
    "noise-blend": _noise_blend,
}
"""The transforms of :func:`transform_mix_outliers`, by name; each maps (N, C, H, W) in [0, 1] to
the same shape and range."""


def transform_mix_outliers(data: ArrayDataset, generator: torch.Generator, n: int | None = None) -> ArrayDataset:
    """Outliers (label ``-1``) made from ``data``: equal shares of every transform in
    :data:`OUTLIER_TRANSFORMS` (in its order; the first ``n % 4`` get one more), each applied to
    inputs drawn from ``data`` with replacement.

    Args:
        data: in-distribution validation inputs.
        generator: CPU generator for every random choice.
        n: number of outliers (default ``len(data)``); at least one per transform.

    Returns:
        An OOD dataset (``kind="far"``) named ``synthetic-outliers``.
    """
    if len(data) == 0:
        raise InputError("cannot make outliers from an empty dataset")
    n = len(data) if n is None else n
    if n < len(OUTLIER_TRANSFORMS):
        raise InputError(f"ask for at least {len(OUTLIER_TRANSFORMS)} synthetic outliers, not {n}")
    parts = []
    names = list(OUTLIER_TRANSFORMS)
    for i, name in enumerate(names):
        count = n // len(names) + (1 if i < n % len(names) else 0)
        idx = torch.randint(0, len(data), (count,), generator=generator)
        parts.append(OUTLIER_TRANSFORMS[name](data.x[idx], generator).clamp(0, 1))
    x = torch.cat(parts).contiguous()
    return ArrayDataset(
        x,
        torch.full((n,), -1, dtype=torch.long),
        name="synthetic-outliers",
        kind="far",
        description=f"validation inputs transformed by {', '.join(names)}",
    )


def word_shuffle_outliers(data: TextDataset, generator: torch.Generator, n: int | None = None) -> TextDataset:
    """Text outliers (label ``-1``): texts of ``data`` with their whitespace-separated words in a
    seeded random order.

    Args:
        data: in-distribution validation texts.
        generator: CPU generator for every random choice.
        n: number of outliers (default ``len(data)``): a seeded sample of ``n`` texts without
            replacement when ``n < len(data)`` (every text is a transformer pass, so callers cap it).

    Returns:
        An OOD dataset (``kind="far"``) named ``<data.name>-word-shuffle``.
    """
    if len(data) == 0:
        raise InputError("cannot make outliers from an empty dataset")
    n = len(data) if n is None else n
    if n < 1:
        raise InputError(f"ask for at least one synthetic outlier, not {n}")
    texts = data.x if n >= len(data) else data.x[torch.randperm(len(data), generator=generator)[:n]]
    shuffled = []
    for text in texts:
        words = text.split()
        order = torch.randperm(len(words), generator=generator).tolist()
        shuffled.append(" ".join(words[i] for i in order))
    return TextDataset(
        Texts(shuffled),
        torch.full((len(shuffled),), -1, dtype=torch.long),
        name=f"{data.name}-word-shuffle",
        kind="far",
        description="validation texts with their words shuffled",
    )
