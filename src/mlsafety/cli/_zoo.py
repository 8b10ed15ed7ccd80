"""``mlsafety zoo``: the embedded models and datasets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlsafety.cli._common import friendly, out_console, print_wrote


@click.group()
def zoo() -> None:
    """Embedded models and datasets."""


@zoo.command("list")
def zoo_list() -> None:
    """Show the embedded models and datasets."""
    from mlsafety import zoo as zoo_lib

    table = Table("kind", "name", "description", box=None)
    for entry in zoo_lib.available():
        table.add_row(entry.kind, entry.name, entry.description)
    out_console.print(table)


@zoo.command("train")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the weights.")
@click.option("--seed", default=0, show_default=True, help="Training seed (the shipped weights use 0).")
@friendly
def zoo_train(name: str, out: Path | None, seed: int) -> None:
    """Re-train embedded model NAME with its recipe (deterministic on the CPU)."""
    import mlsafety.monitoring.trojans
    import mlsafety.robustness  # noqa: F401  registers the digits-denoiser recipes
    from mlsafety import zoo as zoo_lib
    from mlsafety.core import Progress, check_output_path

    zoo_lib.model_info(name)  # an unknown name fails before the output is checked
    if out is not None:
        check_output_path(out, what="weights", example="path/to/weights.safetensors", suffix=".safetensors")
    path = zoo_lib.train_model(name, out=out, seed=seed, progress=Progress())
    print_wrote(f"wrote {path}")
