"""A picture of every corruption at every severity for one input, to check them at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mlsafety.core import InputError
from mlsafety.core import generator as make_generator
from mlsafety.robustness.corruptions.base import SEVERITIES, available, create

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def read_image(source: str, size: int | None = None, grey: bool = False) -> torch.Tensor:
    """One image (C, H, W) in [0, 1] from a file, or ``zoo:<dataset>[:<index>]`` for an embedded sample.

    Args:
        source: an image file (PNG, JPEG, ...) or e.g. ``zoo:digits:3``.
        size: resize so the shorter side has this many pixels (None: keep).
        grey: convert to one channel.
    """
    if source.startswith("zoo:"):
        from mlsafety.zoo import dataset_info, dataset_names, load_dataset

        _, name, *rest = source.split(":")
        if len(rest) > 1 or (rest and not rest[0].isdigit()):
            raise InputError(f"write a zoo sample as zoo:<dataset>[:<index>], got {source!r}")
        modality = dataset_info(name).modality
        if modality != "image":
            images = ", ".join(n for n in dataset_names() if dataset_info(n).modality == "image")
            raise InputError(
                f"zoo dataset {name!r} holds {modality}, not images; give an image file or a zoo image set "
                f"(zoo:digits:0; image sets: {images})"
            )
        data = load_dataset(name, "test")
        index = int(rest[0]) if rest else 0
        if index >= len(data):
            raise InputError(f"{name} has {len(data)} test images; pick an index below that")
        x = data.x[index]
        x = x.mean(dim=0, keepdim=True) if grey and x.shape[0] == 3 else x
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as img:
                pil = img.convert("L" if grey else "RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {source!r}: {exc}") from None
        arr = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8)
        x = arr.view(pil.height, pil.width, -1).permute(2, 0, 1).float() / 255
    if size is not None:
        if size < 1:
            raise InputError(f"size must be a positive number of pixels, got {size}")
        h, w = x.shape[-2:]
        k = size / min(h, w)
        new = (max(1, round(h * k)), max(1, round(w * k)))
        x = torch.nn.functional.interpolate(x[None], size=new, mode="area" if k < 1 else "bilinear")[0].clamp(0, 1)
    return x.contiguous()


def corruption_grid(
    image: torch.Tensor,
    names: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    reference_size: float | None = None,
    table: str | None = None,
) -> torch.Tensor:
    """Every corruption of one image (C, H, W): a tensor (len(names), 1 + len(severities), C, H, W).

    Column 0 is the clean image; each corruption uses the generator ``(seed, name, severity)`` and
    the parameters ``reference_size`` and ``table`` choose (:class:`Corruption`; default: the table
    nearest to the image size). A cell where the corruption is not applicable
    (:meth:`Corruption.not_applicable`) is NaN, never a copy of the clean image.
    """
    if image.ndim != 3:
        raise InputError(f"give one image (C, H, W), got shape {tuple(image.shape)}")
    names = list(names) if names is not None else available()
    x = image[None]
    c, h, w = image.shape
    rows = []
    for name in names:
        corruption = create(name, reference_size=reference_size, table=table)
        cells = [x]
        for s in severities:
            if corruption.applicable((h, w), c, s):
                cells.append(corruption(x, s, make_generator(seed, "corruption-grid", name, s)))
            else:
                cells.append(torch.full_like(x, float("nan")))
        rows.append(torch.cat(cells))
    return torch.stack(rows)


def grid_figure(
    image: torch.Tensor,
    names: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    reference_size: float | None = None,
    cell_inches: float = 1.1,
    table: str | None = None,
) -> Figure:
    """A labelled matplotlib figure of :func:`corruption_grid` (rows: corruptions, columns: severities);
    cells where a corruption is not applicable say so."""
    from matplotlib.figure import Figure

    names = list(names) if names is not None else available()
    grid = corruption_grid(image, names, severities, seed, reference_size, table).detach().cpu()
    rows, cols = grid.shape[:2]
    fig = Figure(figsize=(cell_inches * cols + 1.4, cell_inches * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = grid[r, c]
            if bool(torch.isnan(img).any()):
                ax.text(0.5, 0.5, "not\napplicable", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            elif img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {severities[c - 1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(
        left=1.3 / (cell_inches * cols + 1.4), right=0.99, top=0.97, bottom=0.01, wspace=0.05, hspace=0.1
    )
    return fig
