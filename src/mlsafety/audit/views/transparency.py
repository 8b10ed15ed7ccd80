"""How the ``transparency`` check reads in the report: the sanity-check headline and table, the
layout of its pictures (drawn during the run from tensors: attribution grids, class visualisations,
sanity curves), and, for text models, sentences with their words highlighted by attribution (stored
as JSON during the run, rendered here as inline HTML: every string escaped, no network assets)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mlsafety.audit._check import Artifact, Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit._plots import figure, to_png
from mlsafety.audit.checks._common import metric_name
from mlsafety.audit.views._budget import split_not_measured
from mlsafety.monitoring import transparency as tr

SANITY_CAPTION = (
    "Similarity of each method's maps to the original ones as layers are re-initialised (lower = the method "
    "depends on the model)."
)
VIS_CAPTION = "Inputs optimised to maximise each class logit (with the model's softmax confidence)."
LENS_CAPTION = (
    "Logit lens: the log-probability of the model's final next-token prediction when the residual stream read "
    "after each layer is decoded with the final norm and unembedding (one column per prompt)."
)
LENS_COLUMNS = 32
"""Prompts shown as columns of the logit-lens heat map."""
ATTRIBUTION_CAPTION = (
    "IOI, attribution patching (first-order estimate) of every head: the share of the clean logit difference "
    "restored when the head's clean output is patched into the ABC-corrupted run (1 = all of it)."
)
HEADS_CAPTION = (
    "IOI, exact head patching in the layers the attribution screen ranked highest: share of the clean logit "
    "difference restored (ratio of means over prompts). The heads shown are the highest on these same prompts, so "
    "their shares and intervals lean high (chosen and measured on one set)."
)
LM_PREFIXES = ("lens_", "ioi_")
LM_TITLE = "Transparency: logit lens and IOI patching"
"""The section title on a causal language model."""
LM_DESCRIPTION = (
    "Logit lens (nostalgebraist 2020): the residual stream after every layer decoded at each prompt's last token; "
    "per layer the log-probability of the model's final prediction and the share of prompts whose top-1 token "
    "already is it. IOI patching (Wang et al. 2022): the logit difference between the indirect object and the "
    "subject, an attribution-patching screen over every head, and exact head patching on the screened layers; "
    "each head's share of the clean logit difference restored (ratio of means, bootstrap 95% interval; the top "
    "heads are picked on the prompts their intervals use, so those figures lean high)."
)
"""The section description on a causal language model."""
"""Metric prefixes of the rows stored for a causal language model."""
TEXT_SALIENCY_MIME = "application/vnd.mlsafety.text-saliency+json"
"""The artifact type of highlighted text examples (JSON; :func:`text_saliency_json`)."""
POSITIVE_RGB = (214, 69, 40)
NEGATIVE_RGB = (38, 110, 214)
TEXT_LEGEND = (
    "Each word's background shows its attribution to the explained (predicted) class: "
    '<span style="background:rgba({p},0.8)">for</span> or '
    '<span style="background:rgba({n},0.8)">against</span>; the stronger the colour, the larger the share of '
    "the sentence's largest attribution. Hover a word for its score."
).format(p=",".join(map(str, POSITIVE_RGB)), n=",".join(map(str, NEGATIVE_RGB)))


def sanity_metric(method: str, mode: str, figure_name: str) -> str:
    """The metric name of a sanity figure (``spearman``, ``ssim``, ``pass``) of ``method`` in ``mode``."""
    return metric_name(method, mode, figure_name)


def text_saliency_json(group: str, method: str, examples: Sequence[Mapping[str, Any]]) -> bytes:
    """The stored form of highlighted sentences: ``examples`` holds, per sentence, ``text``, ``label``,
    ``pred`` and ``words`` (a list of ``[word, score, start, end]``, start/end None when unknown)."""
    return json.dumps({"group": group, "method": method, "examples": list(examples)}).encode("utf-8")


def _word_span(word: str, score: float, top: float) -> str:
    rgb = POSITIVE_RGB if score >= 0 else NEGATIVE_RGB
    alpha = 0.85 * min(1.0, abs(score) / top) if top > 0 else 0.0
    colour = f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"
    return f'<span class="tok" style="background:{colour}" title="{score:+.4g}">{html.escape(word)}</span>'


def highlight_sentence(text: str, words: Sequence[Sequence[Any]]) -> str:
    """One sentence as HTML, each word in a span whose background alpha is its share of the
    sentence's largest absolute attribution (red for, blue against). The original characters
    between words are kept when the words carry offsets; every piece of text is escaped."""
    scores = [float(w[1]) for w in words]
    top = max((abs(v) for v in scores), default=0.0)
    spans = all(len(w) >= 4 and w[2] is not None and w[3] is not None for w in words)
    if not spans:
        return " ".join(_word_span(str(w[0]), float(w[1]), top) for w in words)
    out, pos = [], 0
    for w in sorted(words, key=lambda w: int(w[2])):
        start, end = int(w[2]), int(w[3])
        if start < pos:  # overlapping offsets: show the word, not the characters twice
            continue
        out.append(html.escape(text[pos:start]))
        out.append(_word_span(text[start:end], float(w[1]), top))
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def text_saliency_html(payload: Mapping[str, Any]) -> str:
    """A stored group of highlighted sentences (:func:`text_saliency_json`) as an HTML fragment."""
    group, method = html.escape(str(payload.get("group", ""))), html.escape(str(payload.get("method", "")))
    lines = [
        '<div class="text-saliency">',
        f'<p class="caption">Token attributions ({method}) for the predicted class: {group} inputs.</p>',
        f'<p class="legend" style="font-size:12px">{TEXT_LEGEND}</p>',
        "<table><thead><tr><th>label</th><th>pred</th><th>text</th></tr></thead><tbody>",
    ]
    for ex in payload.get("examples", []):
        label = "" if ex.get("label") is None or int(ex["label"]) < 0 else str(int(ex["label"]))
        lines.append(
            f'<tr><td class="num">{html.escape(label)}</td><td class="num">{html.escape(str(ex.get("pred", "")))}</td>'
            f'<td style="line-height:1.9">{highlight_sentence(str(ex.get("text", "")), ex.get("words", []))}</td></tr>'
        )
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


class TransparencyView(View):
    """Headline: the share of methods passing the sanity checks; tables: each method's similarities
    and verdict per test, and the other figures; for text models, highlighted sentences."""

    @classmethod
    def html_fragments(cls, artifacts: Sequence[Artifact]) -> list[str]:
        """HTML fragments for the report drawn from the check's non-image artifacts (highlighted text)."""
        return [text_saliency_html(json.loads(a.data)) for a in artifacts if a.mime == TEXT_SALIENCY_MIME]

    @classmethod
    def section_text(cls, rows: Sequence[StoredRow]) -> tuple[str, str] | None:
        """The section's title and description on a language model (None: the check's own, a classifier's)."""
        if not any(r.metric.startswith(LM_PREFIXES) for r in rows):
            return None
        return LM_TITLE, LM_DESCRIPTION

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        heads = [
            Headline("Attribution methods passing sanity checks", r) for r in rows if r.metric == "sanity_pass_share"
        ]
        lens = sorted((r for r in rows if r.metric.startswith("lens_top1_layer_")), key=lambda r: r.metric)
        first = next((r for r in lens if r.value >= 0.5), None)
        if first is not None:
            heads.append(Headline(f"Logit lens: first read ({first.params.get('point', first.metric)}) whose top-1 "
                                  "is the final prediction on at least half of the prompts", first))  # fmt: skip
        heads += [Headline("IOI logit difference (clean prompts)", r) for r in rows if r.metric == "ioi_logit_diff"]
        return heads

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        lm_rows = [r for r in rows if r.metric.startswith(LM_PREFIXES)]
        rows = [r for r in rows if not r.metric.startswith(LM_PREFIXES)]
        shown = [*lm_tables(lm_rows), *cls._classifier_tables(rows)] if lm_rows else cls._classifier_tables(rows)
        return shown + late

    @classmethod
    def _classifier_tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        by = {r.metric: r for r in rows}
        methods = list(dict.fromkeys(r.params["method"] for r in rows if isinstance(r.params.get("method"), str)
                                     and "mode" in r.params))  # fmt: skip
        modes = sorted({str(r.params["mode"]) for r in rows if "mode" in r.params})
        with_ssim = any(r.params.get("modality") != "text" for r in rows if "mode" in r.params)  # text: no SSIM
        body = []
        for method in methods:
            line = [method]
            for mode in modes:
                rho, ss, ok = (by.get(sanity_metric(method, mode, f)) for f in ("spearman", "ssim", "pass"))
                line += [
                    fmt_value(rho.value) if rho else "",
                    *([fmt_value(ss.value) if ss else ""] if with_ssim else []),
                    ("pass" if ok.value else "FAIL") if ok else "",
                ]
            body.append(line)
        figures = ("Spearman", "SSIM", "verdict") if with_ssim else ("Spearman", "verdict")
        headers = ["method"] + [f"{m} {h}" for m in modes for h in figures]
        tables = (
            [Table("Sanity checks (similarity to the original maps; lower is better)", headers, body)] if body else []
        )
        skipped = [r for r in rows if "mode" not in r.params and "reason" in r.params]
        if skipped:  # a part left out (no correct input to explain, an empty group of examples) and why
            tables.append(
                Table(
                    "Not shown",
                    ["part", "reason"],
                    [[str(r.params.get("group", "sanity checks")), str(r.params["reason"])] for r in skipped],
                )
            )
        other = [r for r in rows if "mode" not in r.params and "reason" not in r.params]
        if other:
            tables.append(
                Table(
                    "Other figures",
                    ["metric", "value", "95% CI", "n"],
                    [[r.metric, fmt_value(r.value), fmt_ci(r), "" if r.n is None else str(r.n)] for r in other],
                )
            )
        return tables


def lm_tables(rows: Sequence[StoredRow]) -> list[Table]:
    """A language model's rows: the logit lens per layer, the IOI logit differences, the top heads."""
    by = {r.metric: r for r in rows}
    tables: list[Table] = []
    layers = sorted({int(r.params["layer"]) for r in rows if r.metric.startswith("lens_")})
    if layers:
        body = []
        for i in layers:
            lp, top = by.get(f"lens_logprob_layer_{i:02d}"), by.get(f"lens_top1_layer_{i:02d}")
            point = str((lp or top).params.get("point", i)) if (lp or top) else str(i)  # type: ignore[union-attr]
            body.append([point, *(x for r in (lp, top) for x in ((fmt_value(r.value), fmt_ci(r)) if r else ("", "")))])
        n = next((r.n for r in rows if r.metric.startswith("lens_") and r.n), None)
        tables.append(Table(
            "Logit lens (last token)",
            ["residual stream", "log-prob of final prediction", "95% CI", "top-1 = final", "95% CI"],
            body,
            f"Over {n} prompts of the prompt set; the last row is the model's own output.",
        ))  # fmt: skip
    ioi = [by[m] for m in ("ioi_logit_diff", "ioi_logit_diff_corrupted") if m in by]
    heads = sorted((r for r in rows if r.metric.startswith("ioi_head_")), key=lambda r: int(r.params.get("rank", 0)))
    if ioi or heads:
        body = [[r.params.get("prompts", r.metric), "logit(IO) - logit(S)", fmt_value(r.value), fmt_ci(r),
                 str(r.n or "")] for r in ioi]  # fmt: skip
        body += [[f"head L{r.params['layer']}.H{r.params['head']}", "share of clean logit diff restored",
                  fmt_value(r.value), fmt_ci(r), str(r.n or "")] for r in heads]  # fmt: skip
        note = "Heads ranked by exact patching of their clean output into the ABC-corrupted run."
        tables.append(Table("IOI patching summary", ["prompts / site", "measure", "value", "95% CI", "n"], body, note))
    skipped = [r for r in rows if "reason" in r.params]
    if skipped:
        why = [[str(r.params.get("group", r.metric)), str(r.params["reason"])] for r in skipped]
        tables.append(Table("Not shown", ["part", "reason"], why))
    return tables


def heatmap_png(
    values: torch.Tensor,
    rows: Sequence[str],
    cols: Sequence[str],
    label: str,
    xlabel: str = "",
    ylabel: str = "",
) -> bytes:
    """A (R, C) matrix as a heat map with labelled rows and columns and a colour bar (NaN left blank)."""
    m = values.detach().float().cpu().numpy()
    fig = figure(min(2.0 + 0.3 * m.shape[1], 12.0), min(1.5 + 0.22 * m.shape[0], 10.0))
    ax = fig.add_subplot()
    finite = m[np.isfinite(m)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    diverging = finite.size > 0 and float(finite.min()) < 0 < float(finite.max())
    kw = {"cmap": "RdBu_r", "vmin": -top, "vmax": top} if diverging else {"cmap": "viridis"}
    image = ax.imshow(np.ma.masked_invalid(m), aspect="auto", interpolation="nearest", **kw)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=6)
    step = max(1, len(cols) // 24)
    ax.set_xticks(range(0, len(cols), step), [str(c) for c in cols][::step], fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=label)
    return to_png(fig)


def _rgb(img: torch.Tensor) -> np.ndarray:
    """An image (C, H, W) in [0, 1] as RGB (H, W, 3)."""
    arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


def _heat(m: torch.Tensor) -> np.ndarray:
    """A map (H, W) scaled to its maximum, coloured with 'inferno'."""
    from matplotlib import colormaps

    arr = (m / m.max().clamp_min(1e-12)).numpy()
    return colormaps["inferno"](arr)[..., :3]


def _mosaic_png(tiles: list[list[np.ndarray]], col_titles: Sequence[str], row_titles: Sequence[str]) -> bytes:
    """Tiles (rows of equal-size RGB arrays) drawn as one image on a single axes (fast to render)."""
    h, w = tiles[0][0].shape[:2]
    pad = max(1, h // 8)
    n_rows, n_cols = len(tiles), len(tiles[0])
    canvas = np.ones((n_rows * (h + pad) - pad, n_cols * (w + pad) - pad, 3))
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = tile
    fig = figure(0.9 * n_cols + 0.6, 0.9 * n_rows + 0.4)
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([j * (w + pad) + w / 2 - 0.5 for j in range(n_cols)], list(col_titles), fontsize=7, rotation=20)
    ax.set_yticks([i * (h + pad) + h / 2 - 0.5 for i in range(n_rows)], list(row_titles), fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return to_png(fig)


def grid_png(x: torch.Tensor, target: torch.Tensor, maps: Mapping[str, torch.Tensor]) -> bytes:
    """Inputs (N, C, H, W) in [0, 1], one row each, beside each method's map (N, H, W) as a heat map."""
    rows = [[_rgb(x[i].cpu()), *[_heat(mp[i]) for mp in maps.values()]] for i in range(x.shape[0])]
    labels = [f"pred {int(t)}" for t in target]
    return _mosaic_png(rows, ["input", *maps], labels)


def images_png(imgs: torch.Tensor, probs: torch.Tensor) -> bytes:
    """Class visualisations (K, C, H, W) in one row, titled with the class and its confidence."""
    tiles = [[_rgb(img) for img in imgs]]
    return _mosaic_png(tiles, [f"{i}: {float(p):.2f}" for i, p in enumerate(probs)], ["class"])


def sanity_png(verdicts: Mapping[str, Mapping[str, tr.SanityResult]]) -> bytes:
    """Mean rank correlation per randomisation stage, one panel per test and one line per method."""
    modes = sorted({m for v in verdicts.values() for m in v})
    fig = figure(3.4 * len(modes), 3.0)
    for j, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), j + 1)
        for name, results in verdicts.items():
            if mode in results:
                res = results[mode]
                ax.plot(range(len(res.stages)), res.spearman.mean(dim=1).numpy(), marker="o", label=name)
                ax.set_xticks(range(len(res.stages)), res.stages, rotation=45, fontsize=6)
        ax.axhline(float(next(iter(verdicts.values()))[mode].threshold), color="grey", ls="--", lw=0.8)
        ax.set_title(f"{mode} randomisation", fontsize=8)
        ax.set_ylabel("Spearman rank correlation")
        ax.set_ylim(-0.2, 1.05)
        if j == 0:
            ax.legend(fontsize=6, frameon=False)
    return to_png(fig)
