"""``mlsafety probe``: honesty probes (CCS and baselines) per layer of a causal LM on yes/no contrast pairs."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from mlsafety.cli._common import Seed, friendly, out_console, print_wide

DATA_HELP = (
    "statements (the project's own true/false statements), mr (movie-review sentiment), or a .csv/.jsonl file "
    "of question,answer,label rows (label 1: the answer is correct)."
)
TEMPLATE_HELP = (
    "A template name of the data's source, 'all' (every template: prompt sensitivity), or a template text with "
    "the item's fields in braces ({text}; {question} and {answer_text} for files) ending in {answer}. Repeatable."
)


def _bad(message: str) -> Any:
    from mlsafety.core import InputError

    return InputError(message)


def _pairs(data: str, n: int | None) -> Any:
    """The contrast pairs of ``--data`` (default template), the first ``n`` items when given."""
    from mlsafety.alignment.probes import load_qa_rows, statement_pairs, text_pairs

    if data == "statements":
        return statement_pairs(n)
    if data == "mr":
        from mlsafety.zoo import load_dataset

        ds = load_dataset("mr", split="test")
        k = len(ds) if n is None else min(n, len(ds))
        return text_pairs(list(ds.x[:k]), ds.y[:k], dataset="mr")
    if not data.endswith((".csv", ".jsonl")):
        raise _bad(f"--data {data}: give statements, mr, or a .csv/.jsonl file of question,answer,label rows")
    pairs = load_qa_rows(data)
    return pairs if n is None else pairs.subset(range(min(n, len(pairs))))


def _templates(pairs: Any, names: tuple[str, ...]) -> list[Any]:
    from mlsafety.alignment.probes import TEMPLATES, Template, check_template

    source = pairs.dataset if pairs.dataset in ("mr", "statements") else "qa"
    known = {t.name: t for t in TEMPLATES[source]}
    chosen: list[Any] = []
    for i, name in enumerate(names or (TEMPLATES[source][0].name,)):
        if name == "all":
            chosen += [t for t in TEMPLATES[source] if t not in chosen]
        elif name in known:
            chosen.append(known[name])
        elif "{" in name or "}" in name:
            check_template(name, f"--template {name!r}")  # named as typed, not as custom-1
            custom = Template(f"custom-{i + 1}", name)
            lacking = sorted(custom.fields() - set(pairs.items[0])) if pairs.items else []
            if lacking:
                raise _bad(
                    f"--template {name!r} reads field(s) {', '.join(lacking)} that {pairs.dataset} items lack; "
                    f"use {', '.join('{' + f + '}' for f in sorted(pairs.items[0]))} and {{answer}}"
                )
            chosen.append(custom)
        else:
            raise _bad(
                f"--template {name}: unknown; give one of {', '.join(known)}, all, or a text ending in {{answer}}"
            )
    return [pairs.with_template(t) for t in chosen]


def _cell(est: Any) -> str:
    return f"{est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]"


@click.command("probe")
@click.option("--model", default="smollm2-135m", show_default=True, help="Causal LM: a zoo name or a saved folder.")
@click.option("--data", default="statements", show_default=True, help=DATA_HELP)
@click.option("--n", "n_items", type=click.IntRange(min=4), help="Use the first N items only.  [default: all]")
@click.option("--template", "templates", multiple=True, help=TEMPLATE_HELP)
@click.option("--layers", help="Comma-separated residual-stream indices (0 = embeddings).  [default: all]")
@click.option("--methods", default="ccs,logistic,mean-diff,top-pc", show_default=True, help="Probes to fit.")
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seeds the fit/test split and CCS.")
@click.option(
    "--misleading/--no-misleading", default=True, show_default=True, help="Also test behind a misleading prefix."
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Texts per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
@friendly
def probe(
    model: str,
    data: str,
    n_items: int | None,
    templates: tuple[str, ...],
    layers: str | None,
    methods: str,
    seed: int,
    misleading: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Probe a causal LM's hidden states for truth (Burns et al. 2022) and print accuracy per layer.

    Fits each probe on a seeded half of the items and tests it on the other half; prints accuracy per layer
    with exact 95% intervals, zero-shot accuracy, the spread over templates, accuracy behind a misleading
    prefix and the honesty gap (share of items where the model's stated answer and the best unsupervised
    probe disagree).
    """
    from mlsafety.alignment import check_hidden_access
    from mlsafety.alignment.probes import PROBES, run_probes
    from mlsafety.audit import resolve_language_model
    from mlsafety.core import generator

    method_list = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))  # each fitted once
    if not method_list:
        raise _bad("--methods is empty; name at least one of " + ", ".join(PROBES.available()))
    for m in method_list:
        PROBES.get(m)
    try:
        layer_list = None if layers is None else [int(k) for k in layers.split(",") if k.strip()]
    except ValueError:
        raise _bad(f"--layers {layers}: give comma-separated integers such as 0,6,12") from None
    if layer_list == []:  # an empty list probed no layer and failed inside the fit
        raise _bad("--layers is empty; give comma-separated integers such as 0,6,12, or leave it out for all layers")
    pairs = _templates(_pairs(data, n_items), templates)
    lm = resolve_language_model(model)
    check_hidden_access(lm)
    report = run_probes(lm, pairs, method_list, layer_list, generator(seed, "probe"), misleading, batch_size=batch_size)
    if as_json:
        out_console.print_json(json.dumps(_as_dict(report)))
        return
    _print(report, method_list)


def _print(report: Any, methods: list[str]) -> None:
    for template in report.templates:
        rows = report.results[template]
        table = Table(
            "layer",
            *methods,
            title=f"probe accuracy on {report.dataset} ({template}), test n={report.n_test}, 95% exact intervals",
            box=None,
        )
        by = {(r.method, r.layer): r for r in rows}
        for k in report.layers:
            table.add_row(str(k), *(_cell(by[(m, k)].accuracy) for m in methods))
        print_wide(table)
        for r in rows:
            if r.layer == -1:
                out_console.print(f"{r.method}: {_cell(r.accuracy)}")
    either = [r for r in report.table() if r.either_sign is not None]
    if either:
        best = max(either, key=lambda r: r.either_sign.value)
        out_console.print(f"best unsupervised either sign: {best.method} layer {best.layer} {_cell(best.either_sign)}")
    if len(report.templates) > 1:
        out_console.print(
            "spread over templates (std): " + ", ".join(f"{m} {v:.3f}" for m, v in report.sensitivity.items())
        )
    if report.misleading:
        out_console.print(
            "behind a misleading prefix: " + ", ".join(f"{m} {_cell(e)}" for m, e in report.misleading.items())
        )
    if report.best is not None:
        gaps = ", ".join(f"{k} {_cell(e)}" for k, e in report.gap.items())
        out_console.print(f"honesty gap (stated answer vs {report.best[0]} at layer {report.best[1]}): {gaps}")
    elif either:  # unsupervised probes ran, but none reads both answers at any layer
        out_console.print("honesty gap: none (no unsupervised probe reads both answers on the fit items at any layer)")


def _as_dict(report: Any) -> dict[str, Any]:
    def est(e: Any) -> dict[str, float]:
        return {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}

    return {
        "dataset": report.dataset,
        "n_fit": report.n_fit,
        "n_test": report.n_test,
        "results": {
            t: [
                {
                    "method": r.method,
                    "layer": r.layer,
                    "accuracy": est(r.accuracy),
                    "either_sign": est(r.either_sign) if r.either_sign is not None else None,
                }
                for r in rows
            ]
            for t, rows in report.results.items()
        },
        "sensitivity": report.sensitivity,
        "best": list(report.best) if report.best else None,
        "misleading": {m: est(e) for m, e in report.misleading.items()},
        "honesty_gap": {k: est(e) for k, e in report.gap.items()},
    }
