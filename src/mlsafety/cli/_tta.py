"""``mlsafety tta``: accuracy with and without test-time adaptation, and the Distribution Invading Attack on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlsafety.cli._common import friendly, out_console

if TYPE_CHECKING:
    import torch


@click.command("tta")
@click.option("--model", default="digits-cnn-bn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", help="Test data (zoo name, .npz or image folder).  [default: the zoo data of a zoo model]")
@click.option("--method", default="tent", show_default=True, help="Adaptation method (tebn, tent, hard-pl, ...).")
@click.option("--share", default=0.1, show_default=True, type=float, help="Malicious share m of each batch, in (0, 1).")
@click.option(
    "--objective",
    type=click.Choice(["targeted", "indiscriminate", "stealthy"]),
    default="targeted",
    show_default=True,
    help="What the attack wants of the other (benign) inputs of the batch.",
)
@click.option("--batch-size", default=64, show_default=True, type=int, help="Inputs per test batch (>= 2).")
@click.option("--corruption", default=None, help="Shift the test data first: NAME:SEVERITY, e.g. fog:3.")
@click.option("--eps", type=float, default=None, help="L-inf bound on the malicious inputs (default: unconstrained).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=0), help="Attack steps.")
@click.option("--batches", default=20, show_default=True, type=click.IntRange(min=1), help="Attacked batches.")
@click.option("--seed", default=0, show_default=True, help="Seed of the batches, corruption and targets.")
@friendly
def tta(
    model: str,
    weights: str | None,
    data: str | None,
    method: str,
    share: float,
    objective: str,
    batch_size: int,
    corruption: str | None,
    eps: float | None,
    steps: int,
    batches: int,
    seed: int,
) -> None:
    """Benign accuracy with and without test-time adaptation, and the success of the Distribution
    Invading Attack (Wu et al. 2023) against it, with exact (Clopper-Pearson) 95% intervals.

    Accuracy streams the test data in batches (the adaptation state carried forward); the attack
    draws BATCHES batches of the (shifted) test data, makes a share m of each malicious and optimises
    them through the adaptation step. Success is counted per attacked batch, benign error per benign input.
    """
    import torch
    from rich.table import Table

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import InputError, forward, generator
    from mlsafety.metrics import proportion
    from mlsafety.robustness import corruptions as corr
    from mlsafety.robustness import tta as tta_lib

    if not 0 < share < 1:
        raise InputError(f"--share must be a malicious share of the batch in (0, 1), e.g. 0.1; got {share:g}")
    if batch_size < 2:
        raise InputError(f"--batch-size must be at least 2 (adaptation needs a batch), got {batch_size}")
    adapt = tta_lib.create(method)  # an unknown method fails here, with a suggestion
    shift = _parse_corruption(corruption, corr.available(), corr.SEVERITIES) if corruption else None
    clf, audit_data = prepare_inputs(AuditConfig(model=model, weights=weights, data=data, seed=seed))
    tta_lib.norm_layers(clf.module)  # a model without batch norm: one line
    test = audit_data.test
    if audit_data.modality != "image":
        raise InputError("test-time adaptation here needs image data and an image model")
    if batch_size > len(test):
        raise InputError(f"--batch-size {batch_size} exceeds the {len(test)} test inputs; use a smaller one")
    x, y = test.x, test.y
    if shift is not None:
        x = corr.corrupt(x, shift[0], shift[1], generator=generator(seed, "tta", "corruption", *shift))
    static = proportion(forward(clf, x).pred.cpu() == y)
    stream = tta_lib.Stream(adapt, clf)
    parts = list(x.split(batch_size))
    if len(parts) > 1 and parts[-1].shape[0] < 2:
        parts[-2:] = [torch.cat(parts[-2:])]
    adapted = proportion(stream.run(parts).argmax(1).cpu() == y)
    nm = min(max(1, round(share * batch_size)), batch_size - 1)
    benign, malicious, yb = _draw(x, y, batches, batch_size, nm, generator(seed, "tta", method, f"{share:g}"))
    attack = tta_lib.DIA(objective=objective, eps=eps, steps=steps, seed=seed)
    res = attack.run(clf, adapt, benign, malicious, y=yb, groups=batches)
    success = proportion(res.success.cpu())
    error = proportion(res.benign_error.cpu())
    error0 = proportion(res.clean_error.cpu())

    table = Table("measure", "value", "95% CI", "n", box=None)
    where = f"{shift[0]} severity {shift[1]}" if shift else "clean"
    for label, est in (
        (f"accuracy, no adaptation ({where})", static),
        (f"accuracy, {method} ({where})", adapted),
        (f"{objective} attack success (per batch)", success),
        ("benign error under attack", error),
        ("benign error, adapted, no attack", error0),
    ):
        table.add_row(label, f"{est.value:.4f}", f"[{est.ci_low:.4f}, {est.ci_high:.4f}]", str(est.n))
    out_console.print(table)
    out_console.print(
        f"{batches} batches of {batch_size}: {nm} malicious ({nm / batch_size:.1%}), "
        f"{'unconstrained' if eps is None else f'L-inf eps {eps:g}'}, {steps} steps",
        highlight=False,
    )


def _parse_corruption(spec: str, names: list[str], severities: tuple[int, ...]) -> tuple[str, int]:
    from mlsafety.core import InputError

    name, _, sev = spec.partition(":")
    if not sev.isdigit() or int(sev) not in severities:
        raise InputError(f"--corruption must be NAME:SEVERITY with severity 1-5, e.g. fog:3; got {spec!r}")
    if name not in names:
        from mlsafety.robustness import corruptions as corr

        corr.CORRUPTIONS.get(name)  # unknown: one line with a suggestion
    return name, int(sev)


def _draw(
    x: torch.Tensor, y: torch.Tensor, groups: int, batch_size: int, nm: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``groups`` batches drawn without replacement: benign inputs, malicious starts, benign labels."""
    import torch

    perms = torch.stack([torch.randperm(x.shape[0], generator=g)[:batch_size] for _ in range(groups)])
    nb = batch_size - nm
    benign, mal = perms[:, :nb].reshape(-1), perms[:, nb:].reshape(-1)
    return x[benign], x[mal], y[benign]
