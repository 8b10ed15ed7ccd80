"""``mlsafety harden``: adversarial training (PGD / TRADES) of a model, written as .safetensors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from mlsafety.cli._common import IMAGE_SIZE_OPTION, NonEmptyPath, Seed, friendly, print_wrote
from mlsafety.cli._help import EntryDefault

PGD = "mlsafety.robustness:adversarial_training"  # the training methods hold their defaults
TRADES = "mlsafety.robustness:trades_training"


@click.command()
@click.option(
    "--model", "model_spec", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory."
)
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Starting weights (.safetensors or .pt).")
@click.option(
    "--data",
    help="Training data: a zoo dataset name (its train split), an .npz file with arrays x, y, or an image folder.  "
    "[default: the zoo data of a zoo model, else digits]",
)
@IMAGE_SIZE_OPTION
@click.option(
    "--method",
    type=click.Choice(["pgd", "trades", "fast"]),
    default="pgd",
    show_default=True,
    help="PGD adversarial training (Madry), TRADES, or fast adversarial training (FGSM from a random start, "
    "Wong et al. 2020; L-inf, no --steps).",
)
@click.option("--eps", type=float, required=True, help="Training radius in [0, 1] pixel units, e.g. 0.1.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), cls=EntryDefault, default_from=PGD, help="Threat model.")
@click.option("--steps", type=int, cls=EntryDefault, default_from=PGD, help="PGD steps per batch.")
@click.option("--epochs", type=int, cls=EntryDefault, default_from=PGD, help="Training epochs.")
@click.option("--lr", type=float, cls=EntryDefault, default_from=PGD, help="Adam learning rate.")
@click.option("--beta", type=float, cls=EntryDefault, default_from=TRADES, help="TRADES robustness weight.")
@click.option("--shift", type=int, default=0, show_default=True, help="Random shifts of up to N pixels (augmentation).")
@click.option("--from-scratch", is_flag=True, help="Re-initialise the model (seeded) instead of fine-tuning it.")
@click.option("--seed", type=Seed(), default=0, show_default=True, help="Training seed.")
@click.option(
    "--out",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the hardened weights (.safetensors).",
)
@friendly
def harden(
    model_spec: str,
    weights: str | None,
    data: str | None,
    image_size: tuple[int, int] | None,
    method: str,
    eps: float,
    norm: str | None,
    steps: int | None,
    epochs: int | None,
    lr: float | None,
    beta: float | None,
    shift: int,
    from_scratch: bool,
    seed: int,
    out: Path,
) -> None:
    """Train a hardened copy of a model against L-inf/L2 attacks and write it as .safetensors."""
    from mlsafety import zoo as zoo_lib
    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import ArrayDataset, InputError, Progress, check_output_path
    from mlsafety.robustness import harden as harden_lib

    check_output_path(out, what="weights", example="path/to/hardened.safetensors", suffix=".safetensors")
    _check_numbers(method, eps, norm, steps, epochs, lr, beta)
    if shift < 0:
        raise InputError(f"--shift must be >= 0 pixels, got {shift}")
    if data is None:  # as in `mlsafety audit`: a zoo model's own data
        data = zoo_lib.model_info(model_spec).dataset if model_spec in zoo_lib.model_names() else "digits"
    # the audit's checks of the model and data (kind, shape, labels, a probe pass): one line, not a traceback
    # from the first training batch; the training set is --data's train split (a zoo set) or the whole .npz
    # (--data as val too: no hold-out, so a small .npz trains as before)
    config = AuditConfig(
        model=model_spec, weights=weights, data=data, val=data, train=data, ood=[], image_size=image_size or None
    )
    clf, checked = prepare_inputs(config)
    train = checked.train
    if not isinstance(train, ArrayDataset):
        raise InputError(
            f"--model {model_spec} is a text classifier; harden trains image classifiers on images "
            "(a zoo image model or path/to/file.py:factory)"
        )
    side = min(int(train.x.shape[-2]), int(train.x.shape[-1]))
    if shift >= side:  # the padding of a huge shift failed to allocate, with a traceback
        raise InputError(f"--shift must be less than the images' side ({side} pixels), got {shift}")
    model = clf.module
    options = {"norm": norm, "steps": steps, "epochs": epochs, "lr": lr, "beta": beta}
    params: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "beta" in params and method != "trades":
        raise InputError("--beta applies to --method trades only")
    if shift:
        params["augment"] = lambda x, g: zoo_lib.random_shift(x, g, shift)
    hardened = harden_lib(
        model, train, method=method, from_scratch=from_scratch, seed=seed, eps=eps, progress=Progress(), **params
    )
    print_wrote(f"wrote {zoo_lib.save_weights(hardened, out)}")


def _check_numbers(
    method: str,
    eps: float,
    norm: str | None,
    steps: int | None,
    epochs: int | None,
    lr: float | None,
    beta: float | None,
) -> None:
    """Refuse a bad number before any work, naming the flag (the training methods' own checks name their
    parameters, e.g. ``TrainConfig epochs``, and let ``--steps 0`` train on random points of the eps-ball)."""
    from mlsafety.core import InputError

    if not (math.isfinite(eps) and eps >= 0):
        raise InputError(f"--eps must be a finite number >= 0 (the training radius in [0, 1] pixel units), got {eps}")
    if method == "fast" and eps == 0:
        raise InputError("--method fast needs --eps > 0 (an L-inf radius in (0, 1] pixel units), got 0")
    if (norm or "linf") == "linf" and eps > 1:
        raise InputError(f"--eps must be at most 1 with --norm linf, the default (pixel units in [0, 1]); got {eps}")
    if method == "fast" and (steps is not None or norm is not None):
        given = " and ".join(f for f, v in (("--steps", steps), ("--norm", norm)) if v is not None)
        both = " and " in given
        raise InputError(
            f"{given} do{'' if both else 'es'} not apply to --method fast (one L-inf step from a random start, "
            f"Wong et al. 2020); drop {'them' if both else 'it'}, or use --method pgd or trades"
        )
    if steps is not None and steps < 1 and method != "fast":
        raise InputError(
            f"--steps must be at least 1 PGD step per batch (0 trains on random points of the eps-ball), got {steps}"
        )
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be at least 1 (passes over the training data), got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be a finite number > 0 (the Adam learning rate, e.g. 0.001), got {lr}")
    if beta is not None and not (math.isfinite(beta) and beta >= 0):
        raise InputError(
            f"--beta must be a finite number >= 0 (TRADES's robustness weight; 6 in the paper), got {beta}"
        )
