"""``mlsafety trojans``: populations of clean and trojaned models to judge scanners on."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlsafety.cli._common import Seed, friendly, out_console, print_wrote


@click.group()
def trojans() -> None:
    """Trojan (backdoor) attacks, scanners and populations of models to judge scanners on."""


@trojans.command("population")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("trojans-population"),
    show_default=True,
    help="Folder for the weights and manifest.json.",
)
@click.option("--n", "n", default=20, show_default=True, help="Number of models (half clean, half trojaned).")
@click.option(
    "--seed", default=0, show_default=True, type=Seed(), help="Population seed (attacks, targets, training seeds)."
)
@click.option("--epochs", default=20, show_default=True, help="Training epochs per model.")
@friendly
def trojans_population(out: Path, n: int, seed: int, epochs: int) -> None:
    """Train a reproducible population of clean and trojaned digits CNNs (deterministic on the CPU)."""
    from mlsafety.core import InputError, Progress
    from mlsafety.monitoring.trojans import make_population

    if n < 2:  # the library's message names no flag
        raise InputError(f"--n must be at least 2 (half of the models clean, half trojaned), got {n}")
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}")
    members = make_population(out, n=n, seed=seed, epochs=epochs, progress=Progress())
    table = Table("model", "attack", "target", "clean acc", "attack success", box=None)
    for m in members:
        kind = m.attack if m.trojaned else f"clean (probe: {m.attack})"
        table.add_row(m.name, kind, str(m.target), f"{m.clean_accuracy:.3f}", f"{m.attack_success_rate:.3f}")
    out_console.print(table)
    print_wrote(f"wrote {len(members)} models and {out / 'manifest.json'}")
