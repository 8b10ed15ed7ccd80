"""Check ``transparency``: attribution maps, their sanity checks, and class visualisations.

Attribution grids show what drove the model's decision on correctly classified, misclassified,
adversarial (L-inf PGD from the attack registry) and OOD inputs. The sanity checks of Adebayo et al.
(2018) then test whether each method's maps depend on the model at all: the maps of the audited model
are compared (Spearman rank correlation and SSIM of absolute maps) with those of copies whose layers
are re-initialised (cascading from the output, and one layer at a time). A method *passes* when its
maps change; explanations that survive the destruction of the model describe the input, not the
model. With ``"label"`` among ``sanity_modes`` and training data in the audit, a copy of the model is
re-initialised and trained for ``label_epochs`` on permuted labels with the shared training loop
(the label-randomisation test; off by default, it trains a model). Integrated gradients' completeness
gap is stored as a numerical health figure. Finally an image per class that maximises its logit
(Fourier parameterisation, random jitter/scale/rotation).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mlsafety.audit._check import (
    DECISION,
    Artifact,
    Check,
    Headline,
    Row,
    StoredRow,
    Table,
    TaskResult,
    fmt_value,
    register_check,
)
from mlsafety.audit._context import AuditContext
from mlsafety.audit._plots import figure, to_png
from mlsafety.core import ArrayDataset, InputError, forward
from mlsafety.metrics import bootstrap_mean
from mlsafety.monitoring import transparency as tr

CHECK = "transparency"


def _metric(method: str) -> str:
    return method.replace("-", "_")


def _method(ctx: AuditContext, name: str) -> tr.Attribution:
    """The attribution method ``name``; a method that draws noise (SmoothGrad) gets a derived seed."""
    params = tr.ATTRIBUTIONS.parameters(name) or []
    return tr.create(name, **({"seed": ctx.seed_for(CHECK, "method", name)} if "seed" in params else {}))


@register_check("transparency")
class Transparency(Check):
    pillar = "monitoring"
    title = "Transparency: attributions, sanity checks, feature visualisation"
    description = (
        "Attribution maps on correct, misclassified, adversarial and OOD inputs; sanity checks (Adebayo et al. 2018): "
        "a method passes when its maps change once the model's layers are re-initialised (Spearman rank correlation "
        "of absolute maps below the threshold); integrated gradients' completeness gap; class visualisations."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "methods": ["saliency", "input-x-gradient", "smoothgrad", "integrated-gradients", "occlusion"],
        "grid_methods": ["saliency", "smoothgrad", "integrated-gradients", "occlusion"],
        "examples": 3,
        "sanity_inputs": 16,
        "sanity_modes": ["cascading", "independent"],
        "label_epochs": 10,
        "threshold": 0.5,
        "adversarial_eps": 0.1,
        "visualize": True,
        "vis_steps": 60,
    }
    quick: ClassVar[dict[str, Any]] = {"sanity_inputs": 8, "sanity_modes": ["cascading"], "vis_steps": 40}
    metrics = (
        *(f"*_{mode}_{m}" for mode in ("cascading", "independent", "label") for m in ("spearman", "ssim", "pass")),
        "sanity_pass_share", "ig_completeness_gap", "class_visualisation_confidence",
    )  # fmt: skip

    def run(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        for name in [*p["methods"], *p["grid_methods"]]:
            tr.ATTRIBUTIONS.get(name)  # unknown names fail before any work
        rows: list[Row] = []
        artifacts: list[Artifact] = []
        data = ctx.hazard("clean")
        pred = ctx.outputs("clean").pred.cpu()
        correct = (pred == data.y).nonzero()[:, 0]
        wrong = (pred != data.y).nonzero()[:, 0]
        g = ctx.generator("transparency", "inputs")
        order = torch.randperm(len(data), generator=g)
        pick = order[torch.isin(order, correct)][: int(p["sanity_inputs"])]
        x_s = data.x[pick]

        # -- sanity checks -------------------------------------------------------------------
        verdicts: dict[str, dict[str, tr.SanityResult]] = {}
        recipe = _label_recipe(ctx, int(p["label_epochs"])) if "label" in p["sanity_modes"] else None
        for name in p["methods"]:
            method = _method(ctx, name)
            verdicts[name] = {}
            for mode in p["sanity_modes"]:
                res = tr.sanity_check(
                    method,
                    ctx.model,
                    x_s,
                    mode=mode,
                    threshold=float(p["threshold"]),
                    generator=ctx.generator(CHECK, "sanity", mode),  # every method sees the same re-inits
                    train=recipe,
                    data=ctx.data.train,
                )
                verdicts[name][mode] = res
                per_input = res.spearman.mean(dim=0) if mode == "independent" else res.spearman[-1]
                per_ssim = res.ssim.mean(dim=0) if mode == "independent" else res.ssim[-1]
                common = {"method": name, "mode": mode, "threshold": res.threshold, "stages": res.stages}
                seed = ctx.seed_for(CHECK, "clean", name, mode)
                rows.append(
                    Row.of(
                        "clean",
                        f"{_metric(name)}_{mode}_spearman",
                        bootstrap_mean(per_input.float(), seed=seed, name=f"{name}-{mode}"),
                        **common,
                    )
                )
                rows.append(
                    Row.of(
                        "clean",
                        f"{_metric(name)}_{mode}_ssim",
                        bootstrap_mean(per_ssim.float(), seed=seed, name=f"{name}-{mode}-ssim"),
                        **common,
                    )
                )
                rows.append(
                    Row.exact("clean", f"{_metric(name)}_{mode}_pass", float(res.passed), DECISION, len(pick), **common)
                )
        if verdicts and p["sanity_modes"]:
            passed = [all(r.passed for r in v.values()) for v in verdicts.values()]
            rows.append(  # a summary of the methods' verdicts, not a sample estimate
                Row.exact(
                    "clean",
                    "sanity_pass_share",
                    sum(passed) / len(passed),
                    DECISION,
                    len(passed),
                    passed=[n for n, ok in zip(verdicts, passed) if ok],
                )
            )
            artifacts.append(
                Artifact(
                    "sanity-checks",
                    _sanity_png(verdicts),
                    caption="Similarity of each method's maps to the original ones as layers are "
                    "re-initialised (lower = the method depends on the model).",
                )
            )

        # -- integrated gradients' completeness ------------------------------------------------
        ig = tr.IntegratedGradients()
        _, delta = ig.attribute_with_delta(ctx.model, x_s, pred[pick])
        rows.append(
            Row.of(
                "clean",
                "ig_completeness_gap",
                bootstrap_mean(delta.abs().cpu(), seed=ctx.seed_for(CHECK, "clean", "ig"), name="ig"),
                steps=ig.steps,
                method=ig.method,
            )
        )

        # -- attribution grids -------------------------------------------------------------------
        k = int(p["examples"])
        groups: dict[str, torch.Tensor] = {}
        if k > 0:
            groups["correct"] = data.x[order[torch.isin(order, correct)][:k]]
            if wrong.numel():
                groups["misclassified"] = data.x[order[torch.isin(order, wrong)][:k]]
            clean_x = groups["correct"]
            groups["adversarial"] = _adversarial(
                ctx, clean_x, data.y[order[torch.isin(order, correct)][:k]], float(p["adversarial_eps"])
            )
            for ood_name in sorted(ctx.data.ood)[:1]:
                groups[f"ood/{ood_name}"] = ctx.hazard(f"ood/{ood_name}").x[:k]
            for group, xg in groups.items():
                artifacts.append(
                    Artifact(
                        f"attributions-{group.replace('/', '-')}",
                        _grid_png(ctx, xg, p["grid_methods"]),
                        caption=f"Attributions for the predicted class: {group} inputs.",
                    )
                )

        # -- class visualisations ------------------------------------------------------------------
        if p["visualize"]:
            shape = tuple(data.x.shape[1:])
            if len(shape) != 3:
                raise InputError("class visualisation needs image inputs (C, H, W); set visualize=false")
            imgs = tr.visualize(
                ctx.model,
                list(range(ctx.model.num_classes)),
                shape,
                steps=int(p["vis_steps"]),
                lr=0.1,
                generator=ctx.generator(CHECK, "class-visualisation"),
            )
            probs = forward(ctx.model, imgs, features=False).probs.diagonal().cpu()
            rows.append(
                Row.of(
                    "clean",
                    "class_visualisation_confidence",
                    bootstrap_mean(probs.double(), seed=ctx.seed_for(CHECK, "class-visualisation"), name="confidence"),
                    steps=p["vis_steps"],
                )
            )
            artifacts.append(
                Artifact(
                    "class-visualisations",
                    _images_png(imgs.cpu(), probs),
                    caption="Inputs optimised to maximise each class logit (with the model's softmax confidence).",
                )
            )
        return TaskResult(rows, artifacts)

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [
            Headline("Attribution methods passing sanity checks", r) for r in rows if r.metric == "sanity_pass_share"
        ]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow]) -> list[Table]:
        by_method: dict[str, dict[str, StoredRow]] = {}
        for r in rows:
            method = r.params.get("method")
            if isinstance(method, str) and "mode" in r.params:
                by_method.setdefault(method, {})[r.metric.removeprefix(_metric(method) + "_")] = r
        modes = sorted({key.split("_")[0] for v in by_method.values() for key in v})
        body = []
        for method, cells in by_method.items():
            line = [method]
            for mode in modes:
                rho, ss, ok = cells.get(f"{mode}_spearman"), cells.get(f"{mode}_ssim"), cells.get(f"{mode}_pass")
                line += [
                    fmt_value(rho.value) if rho else "",
                    fmt_value(ss.value) if ss else "",
                    ("pass" if ok.value else "FAIL") if ok else "",
                ]
            body.append(line)
        headers = ["method"] + [f"{m} {h}" for m in modes for h in ("Spearman", "SSIM", "verdict")]
        tables = [Table("Sanity checks (similarity to the original maps; lower is better)", headers, body)]
        other = [r for r in rows if "mode" not in r.params]
        if other:
            tables.append(
                Table(
                    "Other figures",
                    ["metric", "value", "n"],
                    [[r.metric, fmt_value(r.value), "" if r.n is None else str(r.n)] for r in other],
                )
            )
        return tables


def _label_recipe(ctx: AuditContext, epochs: int) -> Callable[[ArrayDataset], nn.Module]:
    """Re-initialise a copy of the audited model and train it on the (label-permuted) data it is given.

    The permutation depends only on the seed, so every method sees the same data: the model is trained
    once and reused.
    """
    from mlsafety import zoo

    if ctx.data.train is None:
        raise InputError("the label-randomisation test needs training data in the audit (--train)")
    if epochs < 1:
        raise InputError("label_epochs must be at least 1")
    trained: list[nn.Module] = []

    def recipe(data: ArrayDataset) -> nn.Module:
        if not trained:
            seed = ctx.seed_for(CHECK, "label-randomisation")  # a training recipe takes an integer seed
            model = zoo.seeded_init(copy.deepcopy(ctx.model.module), seed, "label-randomisation")
            trained.append(zoo.train_classifier(model, data, epochs=epochs, seed=seed, augment=None))
        return trained[0]

    return recipe


def _adversarial(ctx: AuditContext, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    from mlsafety.robustness import attacks

    return attacks.create("pgd", eps=eps, steps=20).attack(ctx.model, x, y, generator=ctx.generator(CHECK, "pgd"))


def _grid_png(ctx: AuditContext, x: torch.Tensor, methods: Sequence[str]) -> bytes:
    target = forward(ctx.model, x, features=False).pred
    maps = [_method(ctx, m).attribute(ctx.model, x, target).abs().sum(dim=1).cpu() for m in methods]
    rows = [[_rgb(x[i].cpu()), *[_heat(mp[i]) for mp in maps]] for i in range(x.shape[0])]
    labels = [f"pred {int(t)}" for t in target]
    return _mosaic_png(rows, ["input", *methods], labels)


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


def _images_png(imgs: torch.Tensor, probs: torch.Tensor) -> bytes:
    tiles = [[_rgb(img) for img in imgs]]
    return _mosaic_png(tiles, [f"{i}: {float(p):.2f}" for i, p in enumerate(probs)], ["class"])


def _sanity_png(verdicts: dict[str, dict[str, tr.SanityResult]]) -> bytes:
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
