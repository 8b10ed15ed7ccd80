"""``mlsafety attack-text``: run one text-attack recipe on a text classifier and write the examples."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, out_console, print_wrote


def _recipes() -> str:
    from mlsafety.robustness import text

    return ", ".join(text.available())


@click.command("attack-text")
@click.option("--model", default="minilm-mr", show_default=True, help="Zoo text model, folder or file.py:factory.")
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for a factory model.")
@click.option("--data", help="Labelled texts: zoo text set, .csv, .jsonl or saved folder. [default: the model's set]")
@click.option("--text-column", default=None, help="Column of the texts in a data file.  [default: text]")
@click.option("--label-column", default=None, help="Column of the labels in a data file.  [default: label]")
@click.option("--recipe", "-r", default="textfooler", show_default=True, help="Text-attack recipe name.")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A recipe hyper-parameter, e.g. -p max_candidates=20 (textfooler; repeatable; VALUE read as JSON, else "
    "text; a name the recipe lacks is refused with the names it takes).",
)
@click.option("--budget", type=int, default=None, help="Model queries per example at most (>= 1). [default: no limit]")
@click.option("--n", "n", type=int, default=50, show_default=True, help="Texts attacked (a seeded subset of the data).")
@click.option("--out", "out_arg", type=NonEmptyPath(file_okay=False), default="attack-text", show_default=True,
              help="Folder for examples.jsonl (changed words marked [[like this]]) and summary.json.")  # fmt: skip
@click.option(
    "--seed", default=0, show_default=True, type=Seed(), help="Seed of the subset, the recipe and the intervals."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@friendly
def attack_text(model: str, weights: str | None, data: str | None, text_column: str | None,
                label_column: str | None, recipe: str, params: tuple[str, ...],
                budget: int | None, n: int, out_arg: str, seed: int, as_json: bool) -> None:  # fmt: skip
    """Attack N texts of DATA with a text-attack RECIPE; print success rate, accuracy under attack, share of words
    perturbed, queries and sentence similarity with 95% intervals, and write the adversarial examples."""
    import json

    import torch

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.core import InputError, check_output_path, generator
    from mlsafety.robustness import text

    text.RECIPES.get(recipe)  # an unknown recipe fails first, with a suggestion
    chosen: dict[str, object] = {}
    for item in params:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param takes NAME=VALUE, got {item!r}; e.g. --param max_candidates=20")
        try:
            chosen[name.strip()] = json.loads(raw)
        except ValueError:
            chosen[name.strip()] = raw
    for own in ("query_budget", "seed"):  # each has its option; the option's value would replace it unsaid
        if own in chosen:
            option = "--budget" if own == "query_budget" else "--seed"
            raise InputError(f"--param {own} is set by {option}; use {option} {chosen[own]} instead")
    text.RECIPES.check_parameters(recipe, chosen)
    if budget is not None and budget < 1:
        raise InputError(f"--budget must be at least 1 query per example, got {budget}; omit it for no limit")
    if n < 1:
        raise InputError(f"--n must be at least 1 text, got {n}")
    out = Path(out_arg)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the examples")
    for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
        if column is not None and not column.strip():  # '' ran as if the option were left out
            raise InputError(f"{flag} is empty; name a column of --data, or leave it out for the default")
    # under a file or in a read-only folder: refused now, not after the attack
    check_output_path(out / "summary.json", what="summary", flag="--out", example="attack-text")
    # a data file is attacked whole (the audit would hold 30% of it out for validation, which nothing here reads)
    val = data if data is not None and Path(data).exists() else None
    config = AuditConfig(model=model, weights=weights, data=data, val=val,
                         text_column="text" if text_column is None else text_column, label_column=label_column,
                         seed=seed, ood=[])  # fmt: skip
    clf, audit_data = prepare_inputs(config)
    if clf.modality != "text":
        raise InputError(
            f"--model {model} is not a text classifier (it takes images); attack-text needs a model with a tokenizer"
        )
    test = audit_data.test
    count = min(n, len(test))
    index = torch.randperm(len(test), generator=generator(seed, "attack-text", "subset"))[:count].sort().values
    texts: list[str] = [str(test.x[int(i)]) for i in index]
    labels = test.y[index]
    attack = text.create(recipe, clf, **{**chosen, "query_budget": budget, "seed": seed})
    attack.check_texts(texts)  # empty texts, only stop words: one line before any query
    results = attack.attack(texts, labels)
    summary = text.evaluate_text_attack(results, seed=seed)
    rows = {
        "attack_success_rate": summary.success_rate,
        "accuracy_under_attack": summary.accuracy_under_attack,
        "original_accuracy": summary.original_accuracy,
        "perturbed_word_share": summary.perturbed_share,
        "queries_per_example": summary.queries,
        "sentence_similarity": summary.similarity,
    }
    record = {
        "recipe": recipe,
        "model": model,
        "data": config.data,
        "n": summary.n,
        "attacked": summary.attacked,
        "succeeded": summary.succeeded,
        "query_budget": budget,
        "seed": seed,
        "params": chosen,
        "metrics": {
            k: None if e is None else {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high}
            for k, e in rows.items()
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "examples.jsonl").write_text(text.examples_jsonl(results), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    table = Table("metric", "value", "95% CI", box=None)
    for name, est in rows.items():
        if est is None:
            table.add_row(name, "-", "-")
        else:
            table.add_row(name, f"{est.value:.4g}", f"[{est.ci_low:.4g}, {est.ci_high:.4g}]")
    out_console.print(table)
    out_console.print(
        f"{recipe} on {summary.n} texts of {config.data} ({summary.attacked} attacked, {summary.succeeded} fooled)",
        highlight=False,
    )
    print_wrote(f"wrote {out / 'examples.jsonl'} and {out / 'summary.json'}")
