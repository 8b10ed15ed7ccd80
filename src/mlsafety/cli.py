"""The ``mlsafety`` command: parses arguments, calls the library, prints. Nothing else lives here.

Exit codes: 0 ok, 1 a gate failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from mlsafety.core import MlsafetyError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)
out_console = Console()


def friendly(fn: F) -> F:
    """Turn a user-caused :class:`MlsafetyError` into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlsafetyError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlsafety")
def main() -> None:
    """Measure how safe a trained PyTorch classifier is, and guard it."""


# -- zoo ---------------------------------------------------------------------------------------
@main.group()
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
    from mlsafety import zoo as zoo_lib
    from mlsafety.core import Progress

    path = zoo_lib.train_model(name, out=out, seed=seed, progress=Progress())
    out_console.print(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
