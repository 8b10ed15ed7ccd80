"""``mlsafety explain``: list the attribution methods, or run their sanity checks on a model."""

from __future__ import annotations

import click
from rich.table import Table

from mlsafety.cli._common import friendly, out_console
from mlsafety.cli._help import show_default

MODES = ("cascading", "independent")
"""The randomisation tests run when no --mode is given (Adebayo et al. 2018)."""


@click.group("explain")
def explain_group() -> None:
    """Attribution methods: list them, or run their sanity checks on a model."""


@explain_group.command("list")
def explain_list() -> None:
    """Show every registered attribution method."""
    import inspect

    from mlsafety.monitoring import transparency as tr

    table = Table("name", "method", box=None)
    for name in tr.available():
        doc = inspect.getdoc(tr.ATTRIBUTIONS.get(name)) or ""
        table.add_row(name, " ".join(doc.split("\n\n")[0].split()))
    out_console.print(table)


@explain_group.command("sanity")
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", default="digits", show_default=True, help="Test data (zoo name, .npz file or image folder).")
@click.option("--method", "-m", "methods", multiple=True, help="Attribution method; repeatable. Default: all.")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(list(MODES)),
    help=f"Randomisation test; repeatable.  [default: {show_default(MODES)}]",
)
@click.option("--inputs", default=16, show_default=True, type=click.IntRange(min=1), help="Test inputs to explain.")
@click.option("--threshold", default=0.5, show_default=True, help="Rank correlation below which maps count as changed.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def explain_sanity(model: str, weights: str | None, data: str, methods: tuple[str, ...], modes: tuple[str, ...],
                   inputs: int, threshold: float, as_json: bool) -> None:  # fmt: skip
    """Sanity checks (Adebayo et al. 2018): do the maps change when the model's layers are re-initialised?"""
    import json

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.monitoring import transparency as tr

    names = list(methods) or tr.available()
    for name in names:
        tr.ATTRIBUTIONS.get(name)  # an unknown name fails before any work, with a suggestion
    clf, checked = prepare_inputs(AuditConfig(model=model, weights=weights, data=data, ood=[]))
    x = checked.test.x[:inputs]
    results = [
        tr.sanity_check(tr.create(name), clf, x, mode=mode, threshold=threshold)
        for name in names
        for mode in (modes or MODES)
    ]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "method": r.method,
                        "mode": r.mode,
                        "spearman": r.score,
                        "passed": r.passed,
                        "ssim": float(r.ssim.mean()),
                    }
                    for r in results
                ],
                indent=2,
            )
        )
        return
    table = Table("method", "test", "Spearman", "SSIM", "verdict", box=None)
    for r in results:
        ssim = r.ssim.mean(dim=0).mean() if r.mode == "independent" else r.ssim[-1].mean()
        table.add_row(r.method, r.mode, f"{r.score:.3f}", f"{float(ssim):.3f}", "pass" if r.passed else "FAIL")
    out_console.print(table)
