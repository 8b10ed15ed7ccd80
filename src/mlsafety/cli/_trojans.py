"""``mlsafety trojans``: populations of clean and trojaned models to judge scanners on."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, out_console, print_wrote

MAX_MODELS = 10_000
"""The most --n: days of training on a CPU; 10**12 built its plan in memory until the machine ran out."""


@click.group()
def trojans() -> None:
    """Trojan (backdoor) attacks, scanners and populations of models to judge scanners on."""


@trojans.command("population")
@click.option(
    "--out",
    type=NonEmptyPath(file_okay=False),
    default="trojans-population",
    show_default=True,
    help="Folder for the weights and manifest.json.",
)
@click.option("--n", "n", default=20, show_default=True, help="Number of models (half clean, half trojaned).")
@click.option(
    "--seed", default=0, show_default=True, type=Seed(), help="Population seed (attacks, targets, training seeds)."
)
@click.option("--epochs", default=20, show_default=True, help="Training epochs per model.")
@friendly
def trojans_population(out: str, n: int, seed: int, epochs: int) -> None:
    """Train a reproducible population of clean and trojaned digits CNNs (deterministic on the CPU)."""
    from mlsafety.core import InputError, Progress, check_output_path
    from mlsafety.monitoring.trojans import make_population

    if not 2 <= n <= MAX_MODELS:  # the library's message names no flag
        raise InputError(
            f"--n must be at least 2 and at most {MAX_MODELS} (half of the models clean, half trojaned), got {n}"
        )
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    folder = Path(out)
    # a folder under a file or in a read-only place: one line now, not a traceback from mkdir
    check_output_path(folder / "manifest.json", what="population", example="path/to/population")
    members = make_population(folder, n=n, seed=seed, epochs=epochs, progress=Progress())
    table = Table("model", "attack", "target", "clean acc", "attack success", box=None)
    for m in members:
        kind = m.attack if m.trojaned else f"clean (probe: {m.attack})"
        table.add_row(m.name, kind, str(m.target), f"{m.clean_accuracy:.3f}", f"{m.attack_success_rate:.3f}")
    out_console.print(table)
    print_wrote(f"wrote {len(members)} models and {folder / 'manifest.json'}")
