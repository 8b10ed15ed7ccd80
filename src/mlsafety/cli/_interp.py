"""``mlsafety interp``: the logit lens, activation / head patching sweeps and the IOI circuit report on a causal LM."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Literal

import click
from rich.table import Table

from mlsafety.cli._common import NonEmptyPath, Seed, friendly, out_console, print_wide, print_wrote

POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head_out")
"""The hook points a patching sweep takes (``head_out``: each attention head separately)."""

MAX_IOI_PROMPTS = 100_000
"""Most IOI prompts (--n): every head is patched over all of them; 10**20 ran until killed."""

MODEL_HELP = "Causal LM: a zoo name (smollm2-135m) or a folder with a saved transformers causal LM and tokenizer."


def _lm(model: str) -> Any:
    from mlsafety.audit import resolve_language_model

    return resolve_language_model(model)


def _bad(message: str) -> Any:
    from mlsafety.core import InputError

    return InputError(message)


@click.group("interp")
def interp_group() -> None:
    """Mechanistic interpretability on a causal language model: logit lens, patching, IOI circuit."""


@interp_group.command("lens")
@click.option("--model", default="smollm2-135m", show_default=True, help=MODEL_HELP)
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt; repeatable.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Tokens shown per layer.")
@click.option(
    "--out", type=NonEmptyPath(dir_okay=False), help="Write the heat map: FILE.png, or an HTML section FILE.html."
)
@friendly
def interp_lens(model: str, prompts: tuple[str, ...], top_k: int, out: str | None) -> None:
    """Decode the residual stream after every layer at each prompt's last token (nostalgebraist 2020)."""
    from mlsafety.monitoring.interp import logit_lens

    if any(not p.strip() for p in prompts):
        raise _bad("--prompt is empty; give text to decode")
    _check_out(out)
    lm = _lm(model)
    result = logit_lens(lm, list(prompts), top_k=top_k)
    probs = result.top_logprobs.exp()
    shown = int(result.top_ids.shape[-1])  # top_k, or the vocabulary when it is smaller
    for j, prompt in enumerate(prompts):
        table = Table("residual stream", *(f"top {k + 1}" for k in range(shown)), title=f"logit lens: {prompt!r}",
                      box=None)  # fmt: skip
        for i, name in enumerate(result.layers):
            cells = [f"{result.top_tokens[i][j][k]!r} {float(probs[i, j, k]):.2f}" for k in range(shown)]
            table.add_row(name, *cells)
        print_wide(table)
    if out is not None:
        _write_lens(result, list(prompts), Path(out))


def _check_out(out: str | None) -> None:
    """Refuse an ``--out`` that is neither .png nor .html, or that cannot be written."""
    from mlsafety.core import check_output_path

    if out is None:
        return
    if Path(out).suffix not in (".png", ".html"):
        raise _bad(f"--out {out}: give a .png (heat map) or .html (report section) path")
    check_output_path(Path(out), what="heat map", flag="--out", example="interp.html")


def _write_lens(result: Any, prompts: list[str], path: Path) -> None:
    """The lens heat map (probability of the final layer's top-1 token, per layer and prompt) as PNG or HTML."""
    import torch

    from mlsafety.audit import heatmap_png

    final = result.top_ids[-1, :, 0]
    agree = result.top_ids[:, :, 0] == final  # (layers, N): the lens' top-1 is already the final prediction
    png = heatmap_png(agree.float(), [n.removeprefix("blocks.") for n in result.layers],
                      [f"{j}" for j in range(len(prompts))], "top-1 = final prediction (1) or not (0)",
                      xlabel="prompt", ylabel="residual stream read")  # fmt: skip
    first = [int(torch.nonzero(agree[:, j])[0]) for j in range(len(prompts))]
    listed = "".join(
        f"<li>{j}: {html.escape(p)!s} &rarr; {html.escape(result.top_tokens[-1][j][0])!r}, first agreeing read "
        f"{html.escape(result.layers[first[j]])}</li>"
        for j, p in enumerate(prompts)
    )
    _write(path, png, "Logit lens (last token)",
           "Each column is a prompt, each row a residual stream read (block inputs, then the last block's output, "
           "decoded with the final norm and unembedding; nostalgebraist 2020). Colour: whether the read's top-1 "
           f"token is already the model's final prediction.</p><ol start=\"0\">{listed}</ol><p>",
           "logit lens heat map")  # fmt: skip


def _write(path: Path, png: bytes, title: str, text: str, alt: str) -> None:
    """``png`` to ``path`` (.png), or an HTML section with ``title``, ``text`` (HTML) and the image; folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        path.write_bytes(png)
    else:
        path.write_text(f'<section class="interp">\n<h2>{html.escape(title)}</h2>\n<p>{text}</p>\n'
                        f"{_img(png, alt)}\n</section>\n", encoding="utf-8")  # fmt: skip
    print_wrote(f"wrote {path}")


def _read_prompts(path: str, flag: str) -> list[str]:
    file = Path(path)
    if file.is_dir():
        raise _bad(f"{flag} {path} is a folder; give a text file with one prompt per line")
    if not file.is_file():
        raise _bad(f"{flag} {path}: file not found; give a text file with one prompt per line")
    try:
        lines = [line.rstrip("\r") for line in file.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError:
        raise _bad(f"{flag} {path} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise _bad(f"{flag} {path} holds no prompts; write one prompt per line")
    return prompts


@interp_group.command("patch")
@click.option("--model", default="smollm2-135m", show_default=True, help=MODEL_HELP)
@click.option("--clean", "clean_file", required=True, help="Text file: clean prompts, one per line.")
@click.option("--corrupted", "corrupted_file", required=True, help="Text file: corrupted prompts, one per line.")
@click.option("--point", default="resid_pre", show_default=True, help=f"Hook point patched: {', '.join(POINTS)}.")
@click.option("--correct", help="Answer token of the clean prompts.  [default: the model's top token on each]")
@click.option("--wrong", help="Answer token of the corrupted prompts.  [default: the model's top token on each]")
@click.option(
    "--direction",
    type=click.Choice(["denoise", "noise"]),
    default="denoise",
    show_default=True,
    help="denoise: run corrupted, patch clean in; noise: run clean, patch corrupted in.",
)
@click.option("--layers", help="Layers swept, comma-separated (e.g. 0,3,7).  [default: all]")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Strongest sites printed.")
@click.option(
    "--out", type=NonEmptyPath(dir_okay=False), help="Write the heat map: FILE.png, or an HTML section FILE.html."
)
@friendly
def interp_patch(
    model: str,
    clean_file: str,
    corrupted_file: str,
    point: str,
    correct: str | None,
    wrong: str | None,
    direction: Literal["denoise", "noise"],
    layers: str | None,
    top: int,
    out: str | None,
) -> None:
    """Activation patching (clean into corrupted): layers x positions, or layers x heads for head_out."""
    from mlsafety.monitoring.interp import activation_patching, head_patching, logit_lens

    if point not in POINTS:
        raise _bad(f"--point {point!r} is not a hook point that can be patched; valid: {', '.join(POINTS)}")
    _check_out(out)
    chosen = _parse_layers(layers)
    clean = _read_prompts(clean_file, "--clean")
    corrupted = _read_prompts(corrupted_file, "--corrupted")
    if len(clean) != len(corrupted):
        raise _bad(f"--clean has {len(clean)} prompts but --corrupted has {len(corrupted)}; give one corrupted "
                   "prompt per clean prompt")  # fmt: skip
    lm = _lm(model)
    if chosen is not None and max(chosen) >= lm.n_layers:
        raise _bad(f"--layers {layers}: the model has {lm.n_layers} layers (0 to {lm.n_layers - 1})")
    answers: list[Any] = []
    for given, prompts in ((correct, clean), (wrong, corrupted)):
        if given is not None:
            answers.append([given] * len(prompts))
        else:  # the model's own top prediction on each prompt
            answers.append(logit_lens(lm, prompts, top_k=1).top_ids[-1, :, 0])
    if correct is None and wrong is None:
        same = (answers[0] == answers[1]).nonzero()
        if len(same):
            i = int(same[0])
            token = lm.tokenizer.decode([int(answers[0][i])])
            raise _bad(f"prompt {i}: the clean and corrupted answers are the same token ({token!r}); pass --correct "
                       "and --wrong")  # fmt: skip
    if point == "head_out":
        result = head_patching(lm, clean, corrupted, answers[0], answers[1], direction=direction, layers=chosen)
    else:
        result = activation_patching(lm, clean, corrupted, answers[0], answers[1], point=point, direction=direction,
                                     layers=chosen)  # fmt: skip
    _print_sites(result, top)
    if out is not None:
        _write_patch(result, Path(out), clean_file, corrupted_file)


def _parse_layers(text: str | None) -> list[int] | None:
    """``--layers 0,3,7`` as sorted distinct integers (None: every layer)."""
    if text is None:
        return None
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise _bad(f"--layers {text!r}: give layer numbers separated by commas, e.g. 0,3,7") from None
    if not values or values[0] < 0:
        raise _bad(f"--layers {text!r}: give layer numbers >= 0 separated by commas, e.g. 0,3,7")
    return values


def _site_label(result: Any, index: tuple[int, ...]) -> str:
    parts = []
    for axis, labels, i in zip(result.axes, result.labels, index, strict=True):
        value = labels[i]
        if axis == "position" and value is not None and result.tokens:
            parts.append(f"position {value} ({result.tokens[i]!r})" if i < len(result.tokens) else f"position {value}")
        else:
            parts.append(f"{axis} {value if value is not None else 'all'}")
    return ", ".join(parts)


def _print_sites(result: Any, top: int) -> None:
    import torch

    mean = result.mean
    flat = mean.flatten().nan_to_num(nan=0.0).abs().argsort(descending=True)[:top]
    table = Table("site", "restored", "95% CI", title=f"strongest {result.point} sites ({result.direction})", box=None)
    for k in flat.tolist():
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), mean.shape))
        table.add_row(
            _site_label(result, index),
            f"{float(mean[index]):.3f}",
            f"[{float(result.ci_low[index]):.3f}, {float(result.ci_high[index]):.3f}]",
        )
    print_wide(table)
    c, d = result.clean, result.corrupted
    out_console.print(
        f"logit diff: clean {c.mean:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}], corrupted {d.mean:.3f} "
        f"[{d.ci_low:.3f}, {d.ci_high:.3f}] over {c.n} prompts (restored: 0 = corrupted run, 1 = clean run)",
        soft_wrap=True,
    )


def _heat(result: Any) -> bytes:
    from mlsafety.audit import heatmap_png

    rows = [f"L{v}" for v in result.labels[0]]
    if result.axes[1] == "position":
        cols = [
            f"{v} {result.tokens[i]!r}" if i < len(result.tokens) else str(v) for i, v in enumerate(result.labels[1])
        ]
    else:
        cols = [f"H{v}" for v in result.labels[1]]
    return heatmap_png(result.mean, rows, cols, "share of the clean logit diff restored", xlabel=result.axes[1],
                       ylabel="layer")  # fmt: skip


def _img(png: bytes, alt: str) -> str:
    import base64

    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _write_patch(result: Any, path: Path, clean_file: str, corrupted_file: str) -> None:
    c = result.clean
    how = ("the clean activation is patched into the corrupted run" if result.direction == "denoise"
           else "the corrupted activation is patched into the clean run (near 0: the site is necessary)")  # fmt: skip
    _write(path, _heat(result), f"Activation patching: {result.point} ({result.direction})",
           f"Clean prompts {html.escape(clean_file)}, corrupted {html.escape(corrupted_file)}; clean logit diff "
           f"{c.mean:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}] over {c.n} prompts. Colour: share of the clean logit "
           f"difference restored when {how}.", "patching heat map")  # fmt: skip


@interp_group.command("ioi", short_help="The IOI circuit report of the model (Wang et al. 2022).")
@click.option("--model", default="smollm2-135m", show_default=True, help=MODEL_HELP)
@click.option("--n", "n_prompts", default=64, show_default=True, type=click.IntRange(2, MAX_IOI_PROMPTS),
              help="IOI prompts.")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seed of the prompts.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1), help="Heads reported.")
@click.option("--name", "names", multiple=True, help="Candidate name (single token); repeatable.  [default: built-in]")
@click.option(
    "--place", "places", multiple=True, help="Candidate place (single token); repeatable.  [default: built-in]"
)
@click.option(
    "--object", "objects", multiple=True, help="Candidate object (single token); repeatable.  [default: built-in]"
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help="A prompt template: {A} and {B} (the two names), then {C} (the repeated name), optionally "
    "{PLACE} and {OBJECT}, ending just before the answer; repeatable.  [default: Wang et al.'s]",
)
@click.option("--out", required=True, type=NonEmptyPath(file_okay=False), help="Folder for ioi.html and ioi.json.")
@friendly
def interp_ioi(
    model: str,
    n_prompts: int,
    seed: int,
    top_k: int,
    names: tuple[str, ...],
    places: tuple[str, ...],
    objects: tuple[str, ...],
    templates: tuple[str, ...],
    out: str,
) -> None:
    """The IOI circuit report (Wang et al. 2022) of the model: logit diff, heads by patching, faithfulness."""
    import json

    from mlsafety.core import check_output_path
    from mlsafety.monitoring.interp import ioi_circuit_report, ioi_dataset

    folder = Path(out)
    check_output_path(folder / "ioi.html", what="report", flag="--out", example="ioi-report")
    lm = _lm(model)
    given = {"names": names, "places": places, "objects": objects, "templates": templates}
    words: dict[str, Any] = {k: list(v) for k, v in given.items() if v}
    data = ioi_dataset(lm, n=n_prompts, seed=seed, **words)
    report = ioi_circuit_report(lm, data, top_k=min(top_k, lm.n_layers * lm.points.n_heads), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ioi.json").write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    (folder / "ioi.html").write_text(_ioi_html(model, report), encoding="utf-8")
    ld = report.logit_diff_clean
    out_console.print(
        f"IOI logit diff (clean) {ld.value:.3f} [{ld.ci_low:.3f}, {ld.ci_high:.3f}] over {report.n_prompts} prompts",
        soft_wrap=True,
    )
    table = Table("head", "effect", "95% CI", "attn END->IO", "attn END->S2", title="top heads by patching", box=None)
    for h in report.heads:
        io, s2 = h.attention.get("IO"), h.attention.get("S2")
        ci = f"[{h.effect.ci_low:.3f}, {h.effect.ci_high:.3f}]"
        table.add_row(f"L{h.layer}.H{h.head}", f"{h.effect.value:.3f}", ci, f"{io.value:.2f}" if io else "",
                      f"{s2.value:.2f}" if s2 else "")  # fmt: skip
    print_wide(table)
    print_wrote(f"wrote {folder / 'ioi.html'} and {folder / 'ioi.json'}")


def _ioi_html(model: str, report: Any) -> str:
    from mlsafety.audit import heatmap_png

    effect = heatmap_png(report.effect, [f"L{i}" for i in range(report.effect.shape[0])],
                         [f"H{h}" for h in range(report.effect.shape[1])], "patching effect (normalised)",
                         xlabel="head", ylabel="layer")  # fmt: skip

    def est(e: Any) -> str:
        return f"{e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"

    heads = "".join(
        f"<tr><td>L{h.layer}.H{h.head}</td><td>{est(h.effect)}</td>"
        + "".join(f"<td>{est(h.attention[k])}</td>" if k in h.attention else "<td></td>" for k in ("IO", "S1", "S2"))
        + "</tr>"
        for h in report.heads
    )
    faith = "".join(f"<tr><td>{k}</td><td>{est(v)}</td></tr>" for k, v in sorted(report.faithfulness.items()))
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>IOI circuit report</title></head><body>\n'
        f"<h1>IOI circuit report: {html.escape(model)}</h1>\n"
        f"<p>{report.n_prompts} prompts. Logit diff (IO - S) clean {est(report.logit_diff_clean)}, ABC-corrupted "
        f"{est(report.logit_diff_corrupted)}; IO preferred on {est(report.io_preferred)} of clean prompts. "
        "The circuit found is this model's own; no claim is made that it matches GPT-2 small's "
        "(Wang et al. 2022).</p>\n"
        f"<h2>Head patching ({html.escape(report.direction)}, positions {html.escape(report.positions)})</h2>\n"
        f"{_img(effect, 'head patching heat map')}\n"
        "<h2>Top heads</h2><table><tr><th>head</th><th>effect</th><th>attn END-&gt;IO</th><th>END-&gt;S1</th>"
        f"<th>END-&gt;S2</th></tr>{heads}</table>\n"
        "<h2>Faithfulness (share of the logit difference kept, top-k heads unablated)</h2>"
        f"<table><tr><th>k</th><th>faithfulness</th></tr>{faith}</table>\n"
        f"<p>Attention: {html.escape(report.attention_method)}</p></body></html>\n"
    )
