"""``mlsafety explain``: list the attribution methods, run their sanity checks on a model, or explain texts."""

from __future__ import annotations

import click
from rich.table import Table

from mlsafety.cli._common import IMAGE_SIZE_OPTION, Finite, NonEmptyPath, friendly, out_console
from mlsafety.cli._help import show_default

MODES = ("cascading", "independent")
"""The randomisation tests run when no --mode is given (Adebayo et al. 2018)."""


@click.group("explain")
def explain_group() -> None:
    """Attribution methods: list them, run their sanity checks on a model, or explain texts word by word."""


@explain_group.command("list")
def explain_list() -> None:
    """Show every registered attribution method."""
    import inspect

    from mlsafety.monitoring import transparency as tr

    table = Table("name", "inputs", "method", box=None)
    for name in tr.available():
        doc = inspect.getdoc(tr.ATTRIBUTIONS.get(name)) or ""
        inputs = ", ".join(sorted(tr.ATTRIBUTIONS.tags(name) & {tr.IMAGE, tr.TEXT}))
        table.add_row(name, inputs, " ".join(doc.split("\n\n")[0].split()))
    out_console.print(table)


@explain_group.command("sanity", short_help="Sanity checks of attribution maps on a model (Adebayo et al. 2018).")
@click.option("--model", default="digits-cnn", show_default=True, help="Zoo model name, or path/to/file.py:factory.")
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option(
    "--data",
    help="Test data (zoo name, .npz file, image folder, or .csv/.jsonl text).  [default: the zoo model's own data]",
)
@IMAGE_SIZE_OPTION
@click.option("--method", "-m", "methods", multiple=True, help="Attribution method; repeatable. Default: all.")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(list(MODES)),
    help=f"Randomisation test; repeatable.  [default: {show_default(MODES)}]",
)
@click.option("--inputs", default=16, show_default=True, type=click.IntRange(min=1), help="Test inputs to explain.")
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=Finite(-1.0, 1.0),
    help="Rank correlation below which maps count as changed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def explain_sanity(model: str, weights: str | None, data: str | None, image_size: tuple[int, int] | None,
                   methods: tuple[str, ...], modes: tuple[str, ...], inputs: int, threshold: float,
                   as_json: bool) -> None:  # fmt: skip
    """Sanity checks (Adebayo et al. 2018): do the maps change when the model's layers are re-initialised?"""
    import json

    from mlsafety.audit import AuditConfig, prepare_inputs
    from mlsafety.monitoring import transparency as tr

    for name in methods:
        tr.ATTRIBUTIONS.get(name)  # an unknown name fails before any work, with a suggestion
    # --data as val too: no 30% hold-out (the sanity checks use no validation set), so a small .npz is not refused
    clf, checked = prepare_inputs(
        AuditConfig(model=model, weights=weights, data=data, val=data, ood=[], image_size=image_size or None)
    )
    names = list(methods) or tr.available(clf.modality)
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
                        "ssim": None if r.ssim is None else float(r.ssim.mean()),
                    }
                    for r in results
                ],
                indent=2,
            )
        )
        return
    table = Table("method", "test", "Spearman", "SSIM", "verdict", box=None)
    for r in results:
        if r.ssim is None:  # text: SSIM is an image measure
            cell = "-"
        else:
            cell = f"{float(r.ssim.mean(dim=0).mean() if r.mode == 'independent' else r.ssim[-1].mean()):.3f}"
        table.add_row(r.method, r.mode, f"{r.score:.3f}", cell, "pass" if r.passed else "FAIL")
    out_console.print(table)


@explain_group.command("text")
@click.option(
    "--model", default="minilm-mr", show_default=True, help="Text model: zoo name or a saved transformers folder."
)
@click.option("--weights", type=NonEmptyPath(dir_okay=False), help="Weights for the model (.safetensors or .pt).")
@click.option("--text", "texts", multiple=True, required=True, help="A text to explain; repeatable.")
@click.option("--method", "-m", default="integrated-gradients", show_default=True, help="Attribution method (text).")
@click.option("--target", type=click.IntRange(min=0), help="Class to explain.  [default: the predicted class]")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@friendly
def explain_text(model: str, weights: str | None, texts: tuple[str, ...], method: str, target: int | None,
                 as_json: bool) -> None:  # fmt: skip
    """Token attributions of a text model, merged into words (red: for the class, blue: against)."""
    import json

    import torch
    from rich.text import Text

    from mlsafety.audit import resolve_model
    from mlsafety.core import InputError
    from mlsafety.monitoring import transparency as tr

    tr.ATTRIBUTIONS.get(method)  # an unknown name fails before any work, with a suggestion
    if tr.TEXT not in tr.ATTRIBUTIONS.tags(method):
        raise InputError(f"method {method!r} does not explain text; choose one of {', '.join(tr.available(tr.TEXT))}")
    clf = resolve_model(model, weights)
    if clf.modality != "text":
        raise InputError(f"model {model!r} takes images; explain text needs a text model (e.g. minilm-mr)")
    if target is not None and texts:
        with torch.inference_mode():
            k = int(clf.logits(list(texts[:1])).shape[1])
        if target >= k:
            raise InputError(f"--target {target} is not a class of this model (it has {k}: 0..{k - 1})")
    res = tr.explain_text(tr.create(method), clf, list(texts), target)
    if as_json:
        out = [
            {
                "text": t,
                "target": int(res.target[i]),
                "words": [{"word": w.text, "score": w.score} for w in res.words[i]],
            }
            for i, t in enumerate(res.texts)
        ]
        click.echo(json.dumps({"method": method, "model": model, "results": out}, indent=2))
        return
    for i, ws in enumerate(res.words):
        top = max((abs(w.score) for w in ws), default=0.0) or 1.0
        line = Text(f"class {int(res.target[i])}: ")
        text, pos = res.texts[i], 0
        for j, w in enumerate(ws):
            share = min(1.0, abs(w.score) / top)
            fg = (214, 69, 40) if w.score >= 0 else (38, 110, 214)
            r, g, b = (int(255 - share * (255 - c)) for c in fg)  # blended onto white
            if w.start is not None and w.end is not None and w.start >= pos:  # the characters between words
                line.append(text[pos : w.start])
                pos = w.end
            elif j > 0:
                line.append(" ")
            line.append(w.text, style=f"black on rgb({r},{g},{b})")
        if pos:
            line.append(text[pos:])
        out_console.print(line, soft_wrap=True)
        scores = "  ".join(f"{w.text}={w.score:+.3g}" for w in ws)
        out_console.print(Text(f"  {method}: {scores}", style="dim"), soft_wrap=True)
