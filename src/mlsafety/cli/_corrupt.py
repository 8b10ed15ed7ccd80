"""``mlsafety corrupt``: a picture of every corruption at every severity for one image."""

from __future__ import annotations

import math
from pathlib import Path

import click

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, print_wrote

MAX_SIZE = 1024
"""The largest --size: the grid holds about a hundred pictures of that side (1.5 GB at 1024; each cell is
drawn about 110 pixels wide), and a larger one fails to allocate with a traceback."""


@click.command()
@click.argument("source")
@click.option(
    "--out",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=Path("corruptions.png"),
    show_default=True,
    help="Where to write the grid picture: PNG, or the format its suffix names (.jpg, .pdf, .svg, ...).",
)
@click.option(
    "--corruptions", "names", default="all", show_default=True, help="Comma-separated corruption names, or 'all'."
)
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Comma-separated severities (1-5).")
@click.option(
    "--size", type=int, default=None, help=f"Resize so the shorter side has this many pixels (1 to {MAX_SIZE})."
)
@click.option("--grey", is_flag=True, help="Convert the image to one channel first.")
@click.option(
    "--reference-size",
    type=float,
    default=None,
    help="Image side ImageNet-C's pixel lengths refer to (default: the published table nearest the image size).",
)
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seed of the corruptions' random draws.")
@friendly
def corrupt(
    source: str,
    out: Path,
    names: str,
    severities: str,
    size: int | None,
    grey: bool,
    reference_size: float | None,
    seed: int,
) -> None:
    """Write a grid of every corruption at every severity for one image SOURCE (a file or zoo:digits:0)."""
    from mlsafety.core import InputError, check_output_path
    from mlsafety.robustness import corruptions as corr

    chosen = corr.available() if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise InputError(f"--corruptions names no corruption, got {names!r}; give names separated by commas, or all")
    for n in chosen:
        corr.CORRUPTIONS.get(n)
    try:
        sevs = [int(s) for s in severities.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}") from None
    if not sevs or any(s not in corr.SEVERITIES for s in sevs):
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}")
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise InputError(
            f"--size must be a whole number of pixels from 1 to {MAX_SIZE} (the shorter side after resizing), "
            f"got {size}"
        )
    if reference_size is not None and not (math.isfinite(reference_size) and reference_size > 0):
        raise InputError(f"--reference-size must be a finite number of pixels > 0 (e.g. 224), got {reference_size}")
    check_output_path(out, what="picture", example="path/to/corruptions.png")
    fmt = _picture_format(out)
    image = corr.read_image(source, size=size, grey=grey)
    fig = corr.grid_figure(image, chosen, sevs, seed=seed, reference_size=reference_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format=fmt)
    print_wrote(f"wrote {out} ({len(chosen)} corruptions x {len(sevs)} severities)")


def _picture_format(out: Path) -> str:
    """The format ``--out``'s suffix names, or PNG without a suffix (written at ``out`` itself: matplotlib
    would add ``.png`` and the ``wrote`` line name a file that is not there); an unknown suffix is refused
    before any work (matplotlib raised ``ValueError`` with a traceback after drawing the grid)."""
    from matplotlib.figure import Figure

    from mlsafety.core import InputError

    if not out.suffix:
        return "png"
    fmt = out.suffix[1:].lower()
    formats = sorted(Figure().canvas.get_supported_filetypes())
    if fmt not in formats:
        others = ", ".join("." + f for f in formats)
        raise InputError(f"--out {out.name}: .{fmt} is not a picture format; end it in .png (or {others})")
    return fmt
