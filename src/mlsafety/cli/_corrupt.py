"""``mlsafety corrupt``: a picture of every corruption at every severity for one image."""

from __future__ import annotations

from pathlib import Path

import click

from mlsafety.cli._common import friendly, print_wrote


@click.command()
@click.argument("source")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("corruptions.png"),
    show_default=True,
    help="Where to write the grid picture (PNG).",
)
@click.option(
    "--corruptions", "names", default="all", show_default=True, help="Comma-separated corruption names, or 'all'."
)
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Comma-separated severities (1-5).")
@click.option("--size", type=int, default=None, help="Resize so the shorter side has this many pixels.")
@click.option("--grey", is_flag=True, help="Convert the image to one channel first.")
@click.option(
    "--reference-size",
    type=float,
    default=None,
    help="Image side ImageNet-C's pixel lengths refer to (default: the published table nearest the image size).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the corruptions' random draws.")
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
    for n in chosen:
        corr.CORRUPTIONS.get(n)
    try:
        sevs = [int(s) for s in severities.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}") from None
    if not sevs or any(s not in corr.SEVERITIES for s in sevs):
        raise InputError(f"--severities must be integers from 1 to 5 separated by commas, got {severities!r}")
    check_output_path(out, what="picture", example="path/to/corruptions.png")
    image = corr.read_image(source, size=size, grey=grey)
    fig = corr.grid_figure(image, chosen, sevs, seed=seed, reference_size=reference_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print_wrote(f"wrote {out} ({len(chosen)} corruptions x {len(sevs)} severities)")
