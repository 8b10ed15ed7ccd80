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

On a text model the methods of ``text_methods`` (tagged ``text``; smaller defaults, since every
pass costs a transformer's forward and backward: on MiniLM, integrated gradients' sanity check alone
costs as much as the two gradient methods' together, so it runs only when listed) explain token
embeddings; the sanity checks re-initialise the head, then each transformer block from the top
down, then the embeddings, and compare token scores over each sentence's real tokens (Spearman;
SSIM is an image measure and is not stored). Instead of grids, a few correct, misclassified and
OOD test sentences are shown with their words highlighted by ``text_method``; adversarial grids and
class visualisations are image-only and are not drawn for text.

On a causal language model (modality ``lm``) the check reads the model's internals instead
(:mod:`mlsafety.monitoring.interp`). The logit lens (nostalgebraist, 2020, "interpreting GPT: the logit
lens") decodes the residual stream after every layer at the last token of ``lm_prompts`` prompts of the
prompt set: per layer, the mean log-probability of the model's own final prediction (bootstrap 95%
interval) and the share of prompts whose top-1 token already agrees with the final one (Clopper-Pearson).
The patching summary runs an indirect-object-identification sweep (Wang et al., 2022, "Interpretability in
the Wild") on ``ioi_prompts`` generated IOI prompts and their ABC corruptions: the model's IOI logit
difference, then attribution patching (Nanda, 2023, "Attribution Patching") over every head as a first-order
screen, and exact head patching (clean head output into the corrupted run) in the ``ioi_patch_layers``
layers the screen ranks highest; the ``ioi_top_heads`` heads that restore most of the clean logit
difference are stored as a ratio of means over prompts with a paired bootstrap 95% interval
(:class:`~mlsafety.monitoring.interp.PatchingResult`). Departure from a full head sweep: exact patching
covers only the screened layers (a full sweep costs layers x heads x prompts forward passes, minutes on a
CPU). A tokenizer for which no IOI prompts can be drawn from the default word lists (names not single tokens)
stores ``ioi_not_run`` with the reason; ``ioi_*`` word lists the user gives are checked when the audit is
planned, and a mistake in them is refused before anything is stored. Heat maps (lens log-probabilities,
attribution and exact head effects) go in the report.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from mlsafety.audit._budget import BUDGET_NOT_MEASURED, not_measured_row, stopped_note, until_deadline
from mlsafety.audit._check import DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int, require_names, require_number
from mlsafety.audit.checks.adversarial import typical_eps
from mlsafety.audit.views.transparency import (
    ATTRIBUTION_CAPTION,
    HEADS_CAPTION,
    LENS_CAPTION,
    LENS_COLUMNS,
    SANITY_CAPTION,
    TEXT_SALIENCY_MIME,
    VIS_CAPTION,
    TransparencyView,
    grid_png,
    heatmap_png,
    images_png,
    sanity_metric,
    sanity_png,
    text_saliency_json,
)
from mlsafety.core import ArrayDataset, Hazard, InputError, LanguageModel, TextDataset, Texts, forward, frozen
from mlsafety.metrics import bootstrap_mean, proportion
from mlsafety.monitoring import interp
from mlsafety.monitoring import transparency as tr
from mlsafety.monitoring.transparency.sanity import MODES as SANITY_MODES

CLEAN = Hazard.clean()
"""The test data as given: the hazard every row of this check is stored under."""
CHECK = "transparency"


def _method(ctx: AuditContext, name: str, steps: int | None = None) -> tr.Attribution:
    """The attribution method ``name``; a method that draws noise (SmoothGrad) gets a derived seed, and a
    path method (integrated gradients) ``steps`` quadrature points when given."""
    params = tr.ATTRIBUTIONS.parameters(name) or []
    kw: dict[str, Any] = {"seed": ctx.seed_for(CHECK, "method", name)} if "seed" in params else {}
    if steps is not None and "steps" in params:
        kw["steps"] = steps
    return tr.create(name, **kw)


_CLASSIFIER_METRICS = (
    *(f"*_{mode}_{m}" for mode in ("cascading", "independent", "label") for m in ("spearman", "ssim", "pass")),
    "sanity_pass_share", "ig_completeness_gap", "class_visualisation_confidence", "sanity_not_run",
    "*_examples_not_shown", BUDGET_NOT_MEASURED,
)  # fmt: skip
"""What the check stores on a classifier (image or text)."""
_LM_METRICS = ("lens_logprob_layer_*", "lens_top1_layer_*", "ioi_logit_diff", "ioi_logit_diff_corrupted",
               "ioi_head_*_restored", "ioi_not_run")  # fmt: skip
"""What the check stores on a causal language model."""


@register_check("transparency")
class Transparency(Check):
    pillar = "monitoring"
    modalities = ("image", "text", "lm")
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
        "adversarial_eps": "auto",  # adversarial.typical_eps of the test data: 8/255 at 32 px colour, 0.1 for digits
        "visualize": True,
        "vis_steps": 60,
        "text_method": "integrated-gradients",
        "text_methods": ["saliency", "input-x-gradient"],
        "text_sanity_inputs": 4,
        "text_sanity_modes": ["cascading"],
        "text_ig_steps": 16,
        "lm_prompts": 64,
        "ioi_prompts": 16,
        "ioi_patch_layers": 4,
        "ioi_top_heads": 5,
        "ioi_names": None,
        "ioi_places": None,
        "ioi_objects": None,
        "ioi_templates": None,
    }
    quick: ClassVar[dict[str, Any]] = {
        "sanity_inputs": 8,
        "sanity_modes": ["cascading"],
        "vis_steps": 40,
        "text_methods": ["saliency"],
        "lm_prompts": 16,
        "ioi_prompts": 8,
        "ioi_patch_layers": 2,
    }
    metrics = (*_CLASSIFIER_METRICS, *_LM_METRICS)
    metrics_by_modality: ClassVar[dict[str, tuple[str, ...]]] = {
        "image": _CLASSIFIER_METRICS, "text": _CLASSIFIER_METRICS, "lm": _LM_METRICS
    }  # fmt: skip
    view = TransparencyView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        self._validate(ctx)  # when the audit is planned, before its run is stored
        if ctx.modality == "lm":
            return [Task("logit-lens", lambda: _lens(ctx, self.params)),
                    Task("ioi-patching", lambda: _ioi(ctx, self.params))]  # fmt: skip
        # three resumable tasks (issue 22: one task ran too long to resume); each draws from its own named
        # generators, so the rows are those of one task running them in this order
        tasks = [Task("sanity", lambda: self._sanity_task(ctx)), Task("examples", lambda: self._examples_task(ctx))]
        if ctx.modality != tr.TEXT and self.params["visualize"]:
            tasks.append(Task("visualisations", lambda: self._visualisation_task(ctx)))
        return tasks

    def _validate(self, ctx: AuditContext) -> None:
        """Refuse unknown method names and settings the audited modality cannot run."""
        p = self.params
        methods = [require_names(CHECK, p, key, "['saliency', 'integrated-gradients']", single=False)
                   for key in ("methods", "grid_methods", "text_methods")]  # fmt: skip
        if not isinstance(p["text_method"], str):
            raise InputError(f"transparency: text_method must be one method's name, got {p['text_method']!r}")
        for name in [*methods[0], *methods[1], p["text_method"], *methods[2]]:
            tr.ATTRIBUTIONS.get(name)  # unknown names fail with a suggestion
        for key in ("sanity_modes", "text_sanity_modes"):  # refused here, not by the library once a task runs
            for mode in require_names(CHECK, p, key, "['cascading', 'independent']", single=False):
                if mode not in SANITY_MODES:
                    raise InputError(f"transparency: {key} has {mode!r}; choose from {', '.join(SANITY_MODES)}")
        if not isinstance(p["visualize"], bool):  # 'no' would read as on by Python's truth
            raise InputError(f"transparency: visualize must be true or false, got {p['visualize']!r}")
        if p["adversarial_eps"] != "auto":
            _eps(p["adversarial_eps"], torch.zeros(0))  # refused here, not once the examples task runs
        require_int("transparency", p, "examples", 0)  # -1 took every example but the last
        for key in ("sanity_inputs", "label_epochs", "vis_steps", "text_sanity_inputs", "text_ig_steps"):
            require_int("transparency", p, key, 1)
        require_number("transparency", p, "threshold", -1.0, 1.0)  # a rank correlation (above 1: every test passed)
        if ctx.modality == "lm":
            for key, least in (("lm_prompts", 1), ("ioi_prompts", 2), ("ioi_top_heads", 1), ("ioi_patch_layers", 0)):
                if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < least:
                    raise InputError(f"transparency: {key} must be an integer >= {least}, got {p[key]!r}")
            if _ioi_words(p):  # the user's word lists: their mistakes are refused now, not stored as ioi_not_run
                interp.ioi_dataset(ctx.lm, n=p["ioi_prompts"], seed=ctx.seed_for(CHECK, "ioi"), **_ioi_words(p))
            return
        if ctx.modality != tr.TEXT:
            return
        if "label" in p["text_sanity_modes"]:
            raise InputError("label randomisation is not available for text models yet; drop it from text_sanity_modes")
        if tr.TEXT not in tr.ATTRIBUTIONS.tags(p["text_method"]):
            raise InputError(f"text_method {p['text_method']!r} does not explain text; choose one of "
                             f"{', '.join(tr.available(tr.TEXT))}")  # fmt: skip

    def _picks(self, ctx: AuditContext) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The test data, its predictions, the correct and misclassified indices and the seeded input order
        (the same in every task)."""
        data = ctx.hazard(CLEAN)
        pred = ctx.outputs(CLEAN).pred.cpu()
        correct = (pred == data.y).nonzero()[:, 0]
        wrong = (pred != data.y).nonzero()[:, 0]
        order = torch.randperm(len(data), generator=ctx.generator(CHECK, "inputs"))
        return data, pred, correct, wrong, order

    def _sanity_task(self, ctx: AuditContext) -> TaskResult:
        """Sanity checks of every method and integrated gradients' completeness on correct test inputs."""
        p = self.params
        text = ctx.modality == tr.TEXT
        data, pred, correct, _, order = self._picks(ctx)
        pick = order[torch.isin(order, correct)][: int(p["text_sanity_inputs" if text else "sanity_inputs"])]
        rows: list[Row] = []
        artifacts: list[Artifact] = []
        if pick.numel():
            x_s = data.x[pick]
            rows, artifacts = self._sanity(ctx, x_s)
            ig = tr.IntegratedGradients(steps=int(p["text_ig_steps"])) if text else tr.IntegratedGradients()
            gap = tr.ig_completeness(ctx.model, x_s, pred[pick], ig, seed=ctx.seed_for(CHECK, str(CLEAN), "ig"))
            rows.append(Row.of(str(CLEAN), "ig_completeness_gap", gap, steps=ig.steps, method=ig.method))
        else:  # the sanity checks explain correct predictions: there are none to explain
            why = f"no test input is classified correctly (0 of {len(data)}): nothing to explain"
            rows.append(Row.exact(str(CLEAN), "sanity_not_run", 1.0, DECISION, len(data), reason=why))
        return TaskResult(rows, artifacts)

    def _examples_task(self, ctx: AuditContext) -> TaskResult:
        """Attribution grids (images) or highlighted sentences (text) of correct, misclassified,
        adversarial and OOD inputs."""
        data, _, correct, wrong, order = self._picks(ctx)
        rows: list[Row] = []
        if ctx.modality == tr.TEXT:
            artifacts = self._sentences(ctx, data, order, correct, wrong, rows)
        else:
            artifacts = self._grids(ctx, data, order, correct, wrong, rows)
        return TaskResult(rows, artifacts)

    def _visualisation_task(self, ctx: AuditContext) -> TaskResult:
        """Class visualisations (images only; under ``--budget`` only when they fit the task's deadline)."""
        for _ in until_deadline(ctx, [CHECK], "transparency/visualisations", first=0):
            return self._visualisations(ctx)
        return TaskResult([not_measured_row(str(CLEAN), "class visualisations")])

    def _visualisations(self, ctx: AuditContext) -> TaskResult:
        p = self.params
        shape = tuple(ctx.hazard(CLEAN).x.shape[1:])
        if len(shape) != 3:
            raise InputError("class visualisation needs image inputs (C, H, W); set visualize=false")
        vis = tr.class_visualisations(ctx.model, shape, ctx.model.num_classes, steps=int(p["vis_steps"]), lr=0.1,
                                      generator=ctx.generator(CHECK, "class-visualisation"),
                                      seed=ctx.seed_for(CHECK, "class-visualisation"))  # fmt: skip
        row = Row.of(str(CLEAN), "class_visualisation_confidence", vis.mean_confidence, steps=p["vis_steps"])
        art = Artifact("class-visualisations", images_png(vis.images, vis.confidence), caption=VIS_CAPTION)
        return TaskResult([row], [art])

    def _sanity(self, ctx: AuditContext, x: torch.Tensor) -> tuple[list[Row], list[Artifact]]:
        """Rows and the picture of the sanity checks of every method on inputs ``x``."""
        p = self.params
        text = ctx.modality == tr.TEXT
        modes = p["text_sanity_modes"] if text else p["sanity_modes"]
        recipe = _label_recipe(ctx, int(p["label_epochs"])) if "label" in modes else None
        names = [
            name for name in (p["text_methods"] if text else p["methods"]) if ctx.modality in tr.ATTRIBUTIONS.tags(name)
        ]
        steps = int(p["text_ig_steps"]) if text else None

        def summary(chosen: list[str]) -> tr.SanityReport:
            return tr.sanity_summary(
                {name: _method(ctx, name, steps) for name in chosen}, ctx.model, x, modes, float(p["threshold"]),
                generator_for=lambda mode: ctx.generator(CHECK, "sanity", mode),  # every method sees the same re-inits
                seed_for=lambda name, mode: ctx.seed_for(CHECK, str(CLEAN), name, mode),
                train=recipe, data=ctx.data.train,
            )  # fmt: skip

        note: dict[str, Any] = {}
        if ctx.deadline is None:
            report = summary(names)
        else:  # under --budget: one method at a time until the task's deadline (each sees the same re-inits)
            parts = [summary([name]) for name in until_deadline(ctx, names, "transparency/sanity")]
            report = tr.SanityReport({k: v for r in parts for k, v in r.results.items()}, len(x))
            note = stopped_note(len(parts), len(names), "attribution methods")
        rows: list[Row] = []
        key = str(CLEAN)
        for name, by_mode in report.results.items():
            for mode, s in by_mode.items():
                common = {"method": name, "mode": mode, "threshold": s.result.threshold, "stages": s.result.stages}
                if text:
                    common["modality"] = "text"  # the view leaves out the SSIM column
                rows.append(Row.of(key, sanity_metric(name, mode, "spearman"), s.spearman, **common))
                if s.ssim is not None:  # text: no SSIM
                    rows.append(Row.of(key, sanity_metric(name, mode, "ssim"), s.ssim, **common))
                passed = float(s.passed)
                rows.append(Row.exact(key, sanity_metric(name, mode, "pass"), passed, DECISION, len(x), **common))
        share = report.pass_share
        if share is None:
            return rows, []
        rows.append(  # a summary of the methods' verdicts, not a sample estimate
            Row.exact(
                str(CLEAN),
                "sanity_pass_share",
                share,
                DECISION,
                len(report.results),
                passed=report.passed_methods,
                **note,
            )
        )
        verdicts = {name: {mode: s.result for mode, s in by_mode.items()} for name, by_mode in report.results.items()}
        return rows, [Artifact("sanity-checks", sanity_png(verdicts), caption=SANITY_CAPTION)]

    def _grids(self, ctx: AuditContext, data: ArrayDataset, order: torch.Tensor, correct: torch.Tensor,
               wrong: torch.Tensor, rows: list[Row]) -> list[Artifact]:  # fmt: skip
        """Attribution grids of correct, misclassified, adversarial and OOD inputs (the first few of ``order``);
        an empty group gets a row in ``rows`` saying why it is not shown."""
        p = self.params
        k = int(p["examples"])
        groups: list[tuple[str, str, torch.Tensor]] = []  # (caption label, artifact slug, inputs)
        if k > 0:
            first = order[torch.isin(order, correct)][:k]
            groups.append(("correct", "correct", data.x[first]))
            groups.append(("misclassified", "misclassified", data.x[order[torch.isin(order, wrong)][:k]]))
            if first.numel():
                adversarial = _adversarial(ctx, data.x[first], data.y[first], _eps(p["adversarial_eps"], data.x))
                groups.append(("adversarial", "adversarial", adversarial))
            else:
                rows.append(_not_shown("adversarial", "no test input is classified correctly to attack"))
            for ood_name in sorted(ctx.data.ood)[:1]:
                h = Hazard.ood(ood_name)
                groups.append((str(h), f"{h.kind}-{h.name}", ctx.hazard(h).x[:k]))
        artifacts = []
        for i, (label, slug, xg) in enumerate(groups):
            if not len(xg):
                rows.append(_not_shown(label, _EMPTY.get(label, f"the {label} data is empty")))
                continue
            target = forward(ctx.model, xg, features=False).pred
            # under --budget: one map of the first group always, every other map while it fits the deadline
            methods = until_deadline(ctx, p["grid_methods"], "transparency/example-map", first=int(i == 0))
            maps = {m: _method(ctx, m).attribute(ctx.model, xg, target).abs().sum(dim=1).cpu() for m in methods}
            if not maps:
                rows.append(_not_shown(label, "not measured: the task's deadline (--budget) came first"))
                continue
            caption = f"Attributions for the predicted class: {label} inputs."
            artifacts.append(Artifact(f"attributions-{slug}", grid_png(xg, target, maps), caption=caption))
        return artifacts

    def _sentences(self, ctx: AuditContext, data: TextDataset, order: torch.Tensor, correct: torch.Tensor,
                   wrong: torch.Tensor, rows: list[Row]) -> list[Artifact]:  # fmt: skip
        """Correct, misclassified and OOD test sentences (the first few of ``order``) with their words
        highlighted by ``text_method`` for the predicted class; an empty group gets a row in ``rows``
        saying why it is not shown."""
        p = self.params
        k = int(p["examples"])
        if k < 1:
            return []
        # (label, slug, texts, true labels, predictions from the shared pass: explained, not recomputed)
        groups: list[tuple[str, str, Texts, torch.Tensor | None, torch.Tensor]] = []
        pred = ctx.outputs(CLEAN).pred.cpu()
        first = order[torch.isin(order, correct)][:k]
        groups.append(("correct", "correct", data.x[first], data.y[first], pred[first]))
        miss = order[torch.isin(order, wrong)][:k]
        groups.append(("misclassified", "misclassified", data.x[miss], data.y[miss], pred[miss]))
        for ood_name in sorted(ctx.data.ood)[:1]:
            h = Hazard.ood(ood_name)
            groups.append(
                (str(h), f"{h.kind}-{h.name}", Texts(ctx.hazard(h).x[:k]), None, ctx.outputs(h).pred.cpu()[:k])
            )
        method = _method(ctx, p["text_method"], int(p["text_ig_steps"]))
        artifacts = []
        for label, slug, texts, truth, target in groups:
            if not len(texts):
                rows.append(_not_shown(label, _EMPTY.get(label, f"the {label} data is empty")))
                continue
            res = tr.explain_text(method, ctx.model, texts, target)
            examples = [
                {
                    "text": t,
                    "label": None if truth is None else int(truth[i]),
                    "pred": int(res.target[i]),
                    "words": [[w.text, w.score, w.start, w.end] for w in res.words[i]],
                }
                for i, t in enumerate(res.texts)
            ]
            artifacts.append(
                Artifact(
                    f"text-saliency-{slug}",
                    text_saliency_json(label, method.name, examples),
                    TEXT_SALIENCY_MIME,
                    caption=f"Token attributions for the predicted class: {label} inputs.",
                )
            )
        return artifacts


_EMPTY = {
    "correct": "no test input is classified correctly",
    "misclassified": "no test input is misclassified",
}
"""Why a group of examples is empty, by group (any other group: its data is empty)."""


def _not_shown(group: str, why: str) -> Row:
    """The row saying that the examples of ``group`` (``correct``, ``misclassified``, ``adversarial``, or
    an OOD hazard) are not shown, and why: ``<group>_examples_not_shown`` under that hazard (clean for the
    test set's groups)."""
    hazard = group if group.startswith("ood/") else str(CLEAN)
    kind = "ood" if group.startswith("ood/") else group
    return Row.exact(hazard, f"{kind}_examples_not_shown", 1.0, DECISION, 0, group=group, reason=why)


def _label_recipe(ctx: AuditContext, epochs: int) -> Callable[[ArrayDataset | TextDataset], nn.Module]:
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

    def recipe(data: ArrayDataset | TextDataset) -> nn.Module:
        if not trained:
            seed = ctx.seed_for(CHECK, "label-randomisation")  # a training recipe takes an integer seed
            model = zoo.seeded_init(copy.deepcopy(ctx.model.module), seed, "label-randomisation")
            trained.append(zoo.train_classifier(model, data, epochs=epochs, seed=seed, augment=None))
        return trained[0]

    return recipe


def _eps(value: object, x: torch.Tensor) -> float:
    """The L-inf radius of the adversarial examples: ``"auto"`` follows the input's resolution
    (:func:`mlsafety.audit.checks.adversarial.typical_eps`), else a number in [0, 1] pixel units."""
    if value == "auto":
        return typical_eps(x)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"transparency adversarial_eps must be 'auto' or a number in [0, 1] (pixel units), "
                         f"got {value!r}")  # fmt: skip
    return float(value)


def _adversarial(ctx: AuditContext, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    from mlsafety.robustness import attacks

    return attacks.create("pgd", eps=eps, steps=20).attack(ctx.model, x, y, generator=ctx.generator(CHECK, "pgd"))


LM_HAZARD = str(CLEAN)
"""The hazard a language model's rows are stored under (the prompt set, as given)."""


# -- language models ---------------------------------------------------------------------------------


def _prompt_subset(ctx: AuditContext, n: int) -> list[str]:
    """``n`` prompts of the prompt set (a seeded sample when it holds more), in the set's order."""
    data = ctx.data.test
    if len(data) <= n:
        return list(data.x)
    keep = torch.randperm(len(data), generator=ctx.generator(CHECK, "lm-prompts"))[:n].sort().values
    return list(data.x[keep])


def _lens_pass(lm: LanguageModel, prompts: list[str], batch_size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The logit lens in one forward pass per batch: ``(reads, log-probs (reads, N, V), top-1 ids (reads, N))``.

    The reads are every block's ``resid_pre`` and the last block's ``resid_post`` at each prompt's last
    token (left padding), decoded with the final norm and the unembedding, as
    :func:`~mlsafety.monitoring.interp.logit_lens` does; the final prediction is the last read's top-1,
    so no second pass is needed to track it.
    """
    if lm.points.table.final_norm is None:
        raise InputError(f"the logit lens needs a final norm; {lm.points.family} models have none")
    last = lm.n_layers - 1
    names = [f"blocks.{i}.resid_pre" for i in range(lm.n_layers)] + [f"blocks.{last}.resid_post"]
    norm = lm.module.get_submodule(lm.points.module_name("final_norm"))
    get_unembed: Any = getattr(lm.module, "get_output_embeddings", None)
    unembed = get_unembed() if callable(get_unembed) else None
    if not isinstance(unembed, nn.Module):
        raise InputError("the logit lens needs the unembedding: the model's get_output_embeddings() gave none")
    reads: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, len(prompts), batch_size):
        _, cache = lm.run_with_cache(lm.encode(prompts[start : start + batch_size], padding_side="left"), names)
        for name in names:
            reads[name].append(cache[name][:, -1])
    with frozen(lm.module), torch.no_grad():
        logprob = torch.stack(
            [unembed(norm(torch.cat(reads[n])[:, None]))[:, 0].float().log_softmax(-1).cpu() for n in names]
        )
    return names, logprob, logprob.argmax(-1)


def _lens(ctx: AuditContext, p: dict[str, Any]) -> TaskResult:
    """Logit lens at the last token: per layer, the log-prob of the final prediction and top-1 agreement."""
    lm = ctx.lm
    prompts = _prompt_subset(ctx, p["lm_prompts"])
    layers, logprob, top1 = _lens_pass(lm, prompts, ctx.batch_size)
    final = top1[-1]  # the last read is the model's output: its top-1 is the final prediction
    target = logprob.gather(-1, final[None, :, None].expand(len(layers), -1, 1))[..., 0]  # (layers, N)
    rows: list[Row] = []
    for i, name in enumerate(layers):
        est = bootstrap_mean(target[i], seed=ctx.seed_for(CHECK, "lens", i), name="lens")
        rows.append(Row.of(LM_HAZARD, f"lens_logprob_layer_{i:02d}", est, layer=i, point=name))
        agree = proportion(top1[i] == final)
        rows.append(Row.of(LM_HAZARD, f"lens_top1_layer_{i:02d}", agree, layer=i, point=name))
    shown = min(LENS_COLUMNS, len(prompts))
    png = heatmap_png(
        target[:, :shown],
        [name.removeprefix("blocks.") for name in layers],
        [str(j) for j in range(shown)],
        "log-prob of the final prediction",
        xlabel="prompt",
        ylabel="residual stream read",
    )
    return TaskResult(rows, [Artifact("logit-lens", png, caption=LENS_CAPTION)])


def _ioi_words(p: dict[str, Any]) -> dict[str, Any]:
    """The ``ioi_*`` word lists the user gave (``names``, ``places``, ``objects``, ``templates``)."""
    return {k: p[f"ioi_{k}"] for k in ("names", "places", "objects", "templates") if p[f"ioi_{k}"] is not None}


def _ioi(ctx: AuditContext, p: dict[str, Any]) -> TaskResult:
    """IOI logit difference, attribution-patching screen over heads, exact head patching on the top layers."""
    lm: LanguageModel = ctx.lm
    words = _ioi_words(p)
    if words:  # checked when the audit was planned (Transparency._validate)
        data = interp.ioi_dataset(lm, n=p["ioi_prompts"], seed=ctx.seed_for(CHECK, "ioi"), **words)
    else:
        try:
            data = interp.ioi_dataset(lm, n=p["ioi_prompts"], seed=ctx.seed_for(CHECK, "ioi"))
        except InputError as exc:  # the default names are not single tokens of this tokenizer: say why
            why = str(exc)
            return TaskResult([Row.exact(LM_HAZARD, "ioi_not_run", 1.0, DECISION, group="IOI patching", reason=why)])
    args = (lm, data.prompts, data.corrupted, data.io_ids, data.s_ids)
    screen = interp.attribution_patching(*args, point="head_out", positions=None, batch_size=min(ctx.batch_size, 32))
    n = len(data)
    clean = bootstrap_mean(screen.clean.values.float(), seed=ctx.seed_for(CHECK, "ioi", "clean"), name="ioi")
    corrupted = bootstrap_mean(screen.corrupted.values.float(), seed=ctx.seed_for(CHECK, "ioi", "abc"), name="ioi")
    rows = [
        Row.of(LM_HAZARD, "ioi_logit_diff", clean, prompts="IOI clean"),
        Row.of(LM_HAZARD, "ioi_logit_diff_corrupted", corrupted, prompts="IOI ABC"),
    ]
    layers = [int(v) for v in screen.labels[0] if v is not None]
    heads = int(screen.mean.shape[1])
    strength = screen.mean.nan_to_num(nan=0.0).abs().amax(dim=1)
    top_layers = sorted(layers[int(i)] for i in strength.argsort(descending=True)[: p["ioi_patch_layers"]])
    artifacts = [
        Artifact(
            "ioi-attribution",
            heatmap_png(screen.mean, [f"L{v}" for v in layers], [f"H{h}" for h in range(heads)],
                        "estimated share of the clean logit diff restored", xlabel="head", ylabel="layer"),
            caption=ATTRIBUTION_CAPTION,
        )
    ]  # fmt: skip
    if top_layers:
        exact = interp.head_patching(*args, positions=None, layers=top_layers, batch_size=ctx.batch_size)
        order = exact.mean.flatten().nan_to_num(nan=-float("inf")).argsort(descending=True)
        for rank, k in enumerate(order[: p["ioi_top_heads"]].tolist()):
            li, h = divmod(int(k), heads)
            layer = top_layers[li]
            value, low, high = (float(t[li, h]) for t in (exact.mean, exact.ci_low, exact.ci_high))
            if not all(math.isfinite(v) for v in (value, low, high)):
                continue  # a NaN site or a single prompt (no interval): not a measurement to store
            rows.append(Row(LM_HAZARD, f"ioi_head_l{layer}_h{h}_restored", value, low, high, n,
                            {"layer": layer, "head": h, "rank": rank + 1}))  # fmt: skip
        artifacts.append(
            Artifact(
                "ioi-heads",
                heatmap_png(exact.mean, [f"L{v}" for v in top_layers], [f"H{h}" for h in range(heads)],
                            "share of the clean logit diff restored", xlabel="head", ylabel="layer"),
                caption=HEADS_CAPTION,
            )
        )  # fmt: skip
    return TaskResult(rows, artifacts)
