"""``mlsafety certify``: certified L2 accuracy of the Gaussian-smoothed model (randomized smoothing)."""

from __future__ import annotations

import click
from rich.table import Table

from mlsafety.cli._common import IMAGE_SIZE_OPTION, Finite, NonEmptyPath, friendly, out_console
from mlsafety.cli._help import show_default

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The L2 radii reported when no --radius is given."""


@click.command()
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option(
    "--data",
    help="Test data (zoo name, .npz file or image folder).  [default: the zoo data of a zoo model, else digits]",
)
@IMAGE_SIZE_OPTION
@click.option(
    "--sigma",
    default=0.25,
    show_default=True,
    type=Finite(min=0, min_open=True),
    help="Noise standard deviation in [0, 1] pixel units.",
)
@click.option("--n0", default=100, show_default=True, type=click.IntRange(min=1), help="Selection samples per input.")
@click.option(
    "--n",
    "n",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Estimation samples per input (the most, with --sequential).",
)
@click.option(
    "--alpha",
    default=0.001,
    show_default=True,
    type=Finite(0, 1, min_open=True, max_open=True),
    help="Failure probability of each certificate.",
)
@click.option("--inputs", default=100, show_default=True, type=click.IntRange(min=1), help="Test inputs to certify.")
@click.option(
    "--radius",
    "radii",
    multiple=True,
    type=Finite(min=0),
    help=f"L2 radius to report; repeatable.  [default: {show_default(RADII)}]",
)
@click.option("--denoiser", help="Zoo denoiser put before the model (denoised smoothing), e.g. digits-denoiser-25.")
@click.option(
    "--sequential",
    "target",
    type=Finite(min=0),
    help="Certify sequentially, stopping each input once its certificate at this radius is decided.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the noise.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def certify(model: str, weights: str | None, data: str | None, image_size: tuple[int, int] | None, sigma: float,
            n0: int, n: int, alpha: float, inputs: int, radii: tuple[float, ...], denoiser: str | None,
            target: float | None, seed: int, as_json: bool) -> None:  # fmt: skip
    """Certified L2 accuracy of the Gaussian-smoothed model (Cohen et al. 2019) on test inputs."""
    import json

    from mlsafety import zoo as zoo_lib
    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import ArrayDataset, InputError, generator
    from mlsafety.metrics import proportion
    from mlsafety.robustness.smoothing import ABSTAIN, SmoothedClassifier

    if denoiser is not None:  # before any work: a classifier here failed mid-run, a text model with a traceback
        denoisers = [name for name in zoo_lib.model_names() if zoo_lib.model_info(name).role == "denoiser"]
        if denoiser not in denoisers:
            raise InputError(f"--denoiser {denoiser!r} is not a zoo denoiser; choose one of {', '.join(denoisers)}")
    # --data as val too: no 30% hold-out (certify uses no validation set), so a small .npz is not refused
    clf, checked = prepare_inputs(
        AuditConfig(model=model, weights=weights, data=data, val=data, ood=[], seed=seed, image_size=image_size or None)
    )
    test = checked.test
    if not isinstance(test, ArrayDataset):
        raise InputError(
            f"--model {model} is a text classifier; certify adds Gaussian noise to images, so give an image "
            "classifier (a zoo image model or path/to/file.py:factory)"
        )
    x, y = test.x[:inputs], test.y[:inputs]
    den = zoo_lib.load_model(denoiser).to(clf.device) if denoiser else None
    smoothed = SmoothedClassifier(clf, clf.num_classes, sigma, denoiser=den)
    g = generator(seed, "cli-certify", sigma)
    if target is None:
        cert = smoothed.certify(x, n0, n, alpha, generator=g)
    else:
        cert = smoothed.certify_sequential(x, n0, n, alpha, radius=target, generator=g)
    rows = []
    for r in radii or RADII:
        est = proportion(cert.certified_accuracy(y, r).cpu())
        rows.append({"radius": r, "certified_accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})
    abstain = float((cert.prediction == ABSTAIN).double().mean())
    samples = float(cert.samples.double().mean())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "sigma": sigma,
                    "n0": n0,
                    "n": n,
                    "alpha": alpha,
                    "inputs": len(y),
                    "rows": rows,
                    "abstain_rate": abstain,
                    "mean_samples": samples,
                },
                indent=2,
            )
        )
        return
    table = Table("L2 radius", "certified accuracy", "95% CI", box=None)
    for row in rows:
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        table.add_row(f"{row['radius']:g}", f"{row['certified_accuracy']:.3f}", ci)
    out_console.print(table)
    out_console.print(
        f"{len(y)} inputs, sigma {sigma:g}, abstained on {abstain:.1%}, "
        f"{samples:.0f} estimation samples per input on average",
        highlight=False,
    )
