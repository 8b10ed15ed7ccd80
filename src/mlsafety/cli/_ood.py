"""``mlsafety ood``: list the OOD detectors, or measure them on a model and data."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from mlsafety.cli._common import IMAGE_SIZE_OPTION, MAX_BOOT, NonEmptyPath, friendly, out_console, print_wide
from mlsafety.cli._help import LazyHelp


def default_detectors() -> list[str]:
    """The detectors ``ood eval`` measures when none is named: those tagged quick in the registry."""
    from mlsafety.monitoring import ood

    return ood.DETECTORS.tagged(ood.QUICK)


@click.group("ood")
def ood_group() -> None:
    """OOD detectors: list them, or measure them on a model and data."""


@ood_group.command("list")
def ood_list() -> None:
    """Show every registered OOD detector, what it needs and the method it implements."""
    import inspect

    from mlsafety.monitoring import ood

    table = Table("name", "needs", "fit", "method", box=None)
    for name in ood.available():
        cls = ood.DETECTORS.get(name)
        doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        table.add_row(name, ", ".join(sorted(cls.needs)), "yes" if cls.requires_fit else "no", first)
    out_console.print(table)


@ood_group.command("eval")
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option(
    "--data",
    help="In-distribution test data (zoo name, .npz, image folder; .csv, .jsonl or saved dataset folder for a "
    "text model).  [default: the zoo data of a zoo model, else digits]",
)
@IMAGE_SIZE_OPTION
@click.option("--train", help="In-distribution data to fit the detectors on (default: the zoo train split, else val).")
@click.option("--text-column", default=None, help="Column of the texts in text data files.  [default: text]")
@click.option("--label-column", default=None, help="Column of the labels in text data files.  [default: label]")
@click.option("--ood", "ood_sets", multiple=True, help="OOD set (zoo name, .npz or folder); repeatable. Default: all.")
@click.option(
    "--detector",
    "-d",
    "detectors",
    multiple=True,
    cls=LazyHelp,
    fill=lambda: ", ".join(default_detectors()),
    help="Detector name; repeatable (see `mlsafety ood list`). Default: {}.",
)
@click.option(
    "--n-boot",
    default=500,
    show_default=True,
    type=click.IntRange(min=10, max=MAX_BOOT),
    help="Bootstrap resamples.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def ood_eval(model: str, weights: str | None, data: str | None, image_size: tuple[int, int] | None, train: str | None,
             text_column: str | None, label_column: str | None, ood_sets: tuple[str, ...], detectors: tuple[str, ...],
             n_boot: int, seed: int, as_json: bool) -> None:  # fmt: skip
    """Fit detectors on in-distribution data and report AUROC, AUPR-In/Out and FPR@95 per OOD set.

    FPR@95 ID+ is the share of OOD inputs accepted at the threshold that keeps 95% of the
    in-distribution inputs (ODIN, OpenOOD v1.0); FPR@95 OOD+ the share of in-distribution inputs
    flagged at the threshold that catches 95% of the OOD inputs (OpenOOD v1.5, pytorch-ood).
    Intervals are seeded 95% bootstrap intervals.
    """
    import json

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.monitoring import ood

    names = list(dict.fromkeys(detectors)) or default_detectors()  # each fitted once
    for name in names:
        ood.DETECTORS.get(name)  # an unknown name fails before any work, with a suggestion
    config = AuditConfig(model=model, weights=weights, data=data, train=train, ood=list(ood_sets) or None, seed=seed,
                         text_column=text_column or "text", label_column=label_column,
                         image_size=image_size or None)  # fmt: skip
    clf, audit_data = prepare_inputs(config)  # the audit's validation: labels, probe pass, finite logits
    sets = {n: d.x for n, d in audit_data.ood.items()}
    result = ood.evaluate(names, clf, audit_data.fit, audit_data.test.x, sets, n_boot=n_boot, seed=seed)
    if as_json:
        out = {s: {d: {m: e.__dict__ for m, e in ms.items()} for d, ms in ds.items()} for s, ds in result.items()}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(
        "OOD set", "detector", "AUROC", "95% CI", "AUPR-In", "AUPR-Out", "FPR@95 ID+", "FPR@95 OOD+", box=None
    )
    for set_name, by_det in result.items():
        for det, m in sorted(by_det.items(), key=lambda kv: -kv[1]["auroc"].value):
            auc = m["auroc"]
            table.add_row(
                set_name,
                det,
                f"{auc.value:.4f}",
                f"[{auc.ci_low:.4f}, {auc.ci_high:.4f}]",
                f"{m['aupr_in'].value:.4f}",
                f"{m['aupr_out'].value:.4f}",
                f"{m['fpr95_id_positive'].value:.4f}",
                f"{m['fpr95_ood_positive'].value:.4f}",
            )
    print_wide(table)  # at the terminal's width Rich cut the detector names ("mahalano..." at 80 columns)
    out_console.print(
        f"fitted on {audit_data.fit.name} ({len(audit_data.fit)} inputs); "
        f"in-distribution: {audit_data.test.name} ({len(audit_data.test)} inputs)",
        highlight=False,
    )
