"""``mlsafety tta``: accuracy with and without test-time adaptation, and the Distribution Invading Attack on it."""

from __future__ import annotations

import click

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, out_console

MAX_STEPS = 10_000
"""Most attack steps and attacked batches (--steps, --batches): 10**20 ran until killed, refused by nothing."""


@click.command("tta")
@click.option("--model", default="digits-cnn-bn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--data", help="Test data (zoo name, .npz or image folder).  [default: the zoo data of a zoo model]")
@click.option(
    "--method",
    default="tent",
    show_default=True,
    help="Adaptation method: tebn, tent, hard-pl, soft-pl, alpha-bn or medbn.",
)
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
@click.option("--steps", default=20, show_default=True, type=click.IntRange(0, MAX_STEPS), help="Attack steps.")
@click.option("--batches", default=20, show_default=True, type=click.IntRange(1, MAX_STEPS), help="Attacked batches.")
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seed of the batches, corruption and targets.")
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
    them through the adaptation step, next to random malicious inputs of the same budget. Targeted success
    is counted per attacked batch, indiscriminate success (benign error) per benign input.
    """
    from rich.table import Table

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import InputError, generator
    from mlsafety.robustness import corruptions as corr
    from mlsafety.robustness import tta as tta_lib

    if not 0 < share < 1:
        raise InputError(f"--share must be a malicious share of the batch in (0, 1), e.g. 0.1; got {share:g}")
    if eps is not None and not 0 < eps <= 1:  # 0 lets no malicious input change: no attack, reported as one
        raise InputError(
            f"--eps must be an L-inf radius in (0, 1] pixel units, or omitted (unconstrained); got {eps:g}"
        )
    if batch_size < 2:
        raise InputError(f"--batch-size must be at least 2 (adaptation needs a batch), got {batch_size}")
    adapt = tta_lib.create(method)  # an unknown method fails here, with a suggestion
    attack = tta_lib.DIA(objective=objective, eps=eps, steps=steps, seed=seed)  # a bad --eps: before any data work
    shift = _parse_corruption(corruption) if corruption is not None else None  # '' ran on clean data
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
    acc = tta_lib.adaptation_accuracy(clf, adapt, x, y, batch_size=batch_size)
    (res,) = tta_lib.attack_success(
        clf, adapt, x, y, attack, shares=[share], batch_sizes=[batch_size], n_batches=batches, seed=seed
    )
    trials = "batches" if objective != "indiscriminate" else "inputs"
    table = Table("measure", "value", "95% CI", "n", "of", box=None)
    for label, est, of in (
        ("accuracy, no adaptation", acc.source, "inputs"),
        (f"accuracy, {method}", acc.adapted, "inputs"),
        (f"attack success ({objective})", res.success, trials),
        ("random inputs, same budget", res.random_success, trials),
        ("benign error under attack", res.benign_error, "inputs"),
        ("benign error, no attack", res.clean_error, "inputs"),
        *((("other predictions kept", res.others_kept, "inputs"),) if res.others_kept is not None else ()),
    ):
        table.add_row(label, f"{est.value:.4f}", f"[{est.ci_low:.4f}, {est.ci_high:.4f}]", str(est.n), of)
    out_console.print(table)
    out_console.print(
        f"data: {f'{shift[0]} severity {shift[1]}' if shift else 'clean'}; "
        f"{batches} attacked batches of {batch_size}: {res.n_malicious} malicious "
        f"({res.n_malicious / batch_size:.1%}), "
        f"{'unconstrained' if eps is None else f'L-inf eps {eps:g}'}, {steps} steps",
        highlight=False,
    )


def _parse_corruption(spec: str) -> tuple[str, int]:
    """``NAME:SEVERITY`` as (registered corruption, severity 1-5); anything else is one line."""
    from mlsafety.core import InputError
    from mlsafety.robustness import corruptions as corr

    name, _, sev = spec.partition(":")
    if not sev.isdigit() or int(sev) not in corr.SEVERITIES:
        raise InputError(f"--corruption must be NAME:SEVERITY with severity 1-5, e.g. fog:3; got {spec!r}")
    corr.CORRUPTIONS.get(name)  # an unknown name: one line with a suggestion
    return name, int(sev)
