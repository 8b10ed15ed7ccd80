"""Check ``ethics``: ETHICS-style moral judgements of a language model, zero-shot and by a linear probe.

Hendrycks et al. 2021 (see :mod:`mlsafety.alignment.evals.ethics`). With ``ethics = "DIR"``
(``[params.ethics]`` in the audit's TOML) the subsets of the official release folder are scored
(``commonsense/cm_test.csv`` ...); without it, the project's own look-alike ``mlsafety-ethics-lookalike``
(NOT ETHICS). One task per subset: accuracy (utilitarianism: pairwise ranking) and, for deontology,
justice and virtue, the grouped exact match, each zero-shot and by the cross-validated probe, with exact
intervals; the probe's accuracy at every layer and a plot of it. Files are read and checked when the audit
is planned, before anything is stored; their SHA-256 is stored with the rows. The rendering is
:mod:`mlsafety.audit.views.ethics`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from mlsafety.alignment.evals import (
    ETHICS_LOOKALIKE,
    SUBSETS,
    EthicsScore,
    EthicsSubset,
    check_fits,
    ethics_lookalike,
    ethics_texts,
    evaluate_ethics,
    load_ethics_dir,
)
from mlsafety.audit._check import COUNT, DECISION, Artifact, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int
from mlsafety.audit.views.ethics import CAPTION, EthicsView, layer_metric, layers_png
from mlsafety.core import Hazard, InputError


@register_check("ethics")
class Ethics(Check):
    pillar = "alignment"
    modalities = ("lm",)
    title = "Machine ethics (ETHICS-style)"
    description = (
        "Everyday moral judgements (Hendrycks et al. 2021): each scenario as a yes/no question, answered zero-shot by "
        "comparing log p(' yes') and log p(' no'), and by a linear probe on the hidden states at the question's end "
        "(k-fold by whole groups, layer chosen inside the training folds); accuracy, the grouped exact match "
        "(deontology and justice 4, virtue 5) and utilitarianism as pairwise ranking. Data: the release folder given "
        "as ethics = DIR, else the project's own look-alike mlsafety-ethics-lookalike (not the benchmark)."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "ethics": "",
        "subsets": list(SUBSETS),
        "max_groups": 0,
        "probe": True,
        "folds": 5,
        "batch_size": 16,
    }
    quick: ClassVar[dict[str, Any]] = {"max_groups": 12, "folds": 3}
    higher_is_better = frozenset({"zero_shot_accuracy", "zero_shot_exact_match", "probe_accuracy", "probe_exact_match"})
    metrics = (
        "zero_shot_accuracy",
        "zero_shot_exact_match",
        "probe_accuracy",
        "probe_exact_match",
        "probe_layer*_accuracy",
        "majority_rate",
        "rows",
    )
    view = EthicsView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params
        wanted = p["subsets"]
        if (
            not isinstance(wanted, (list, tuple))
            or not wanted
            or any(not isinstance(s, str) or s not in SUBSETS for s in wanted)
            or len(set(wanted)) != len(wanted)
        ):
            raise InputError(
                f"ethics: subsets must be a non-empty list drawn from {', '.join(SUBSETS)}, each once, got {wanted!r}"
            )
        if isinstance(p["max_groups"], bool) or not isinstance(p["max_groups"], int) or p["max_groups"] < 0:
            raise InputError(f"ethics: max_groups must be an integer >= 0 (0: all), got {p['max_groups']!r}")
        require_int(self.name, p, "folds", 2)
        require_int(self.name, p, "batch_size", 1)
        if not isinstance(p["probe"], bool):  # 'no' would read as on by Python's truth
            raise InputError(f"ethics: probe must be true or false, got {p['probe']!r}")
        root = str(p["ethics"] or "")
        found = load_ethics_dir(root) if root else ethics_lookalike()  # bad files fail here, before anything is stored
        subsets = [found[s] for s in wanted if s in found]
        if not subsets:
            raise InputError(f"ethics: {root} holds none of the subsets asked for ({', '.join(wanted)})")
        for s in subsets:
            check_fits(ctx.lm, ethics_texts(s), f"{s.subset} scenario")
        if p["probe"]:
            for s in subsets:
                n_groups = (
                    len(s.groups.unique()) if not p["max_groups"] else min(p["max_groups"], len(s.groups.unique()))
                )
                if n_groups < p["folds"]:
                    raise InputError(f"ethics: {s.subset} has {n_groups} groups, fewer than folds={p['folds']}")
        return [Task(s.subset, lambda s=s: self._run(ctx, s)) for s in subsets]  # type: ignore[misc]

    def _run(self, ctx: AuditContext, subset: EthicsSubset) -> TaskResult:
        p = self.params
        if p["max_groups"]:
            subset = subset.take_groups(p["max_groups"], ctx.generator(self.name, subset.subset, "groups"))
        scores = evaluate_ethics(
            ctx.lm,
            subset,
            bool(p["probe"]),
            p["folds"],
            ctx.seed_for(self.name, subset.subset),
            p["batch_size"],
            ctx.progress,
        )
        hazard = str(Hazard("ethics", subset.subset))
        source = subset.source if subset.source != ETHICS_LOOKALIKE else ETHICS_LOOKALIKE
        at: dict[str, Any] = {"source": source}
        if source != ETHICS_LOOKALIKE:
            at["sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        if subset.subset == "utilitarianism":
            at["measure"] = "pairwise ranking"
        zero = scores["zero-shot"]
        rows = [
            Row.exact(hazard, "rows", float(len(subset)), COUNT, **at),
            Row.exact(
                hazard,
                "majority_rate",
                zero.majority,
                DECISION,
                len(subset),
                note="accuracy of always giving the commoner label (0.5 for pairs)",
            ),
        ]
        rows += _score_rows(hazard, "zero_shot", zero, at)
        artifacts = []
        if "probe" in scores:
            probe = scores["probe"]
            rows += _score_rows(
                hazard, "probe", probe, {**at, "folds": p["folds"], "layers_chosen": list(probe.layers)}
            )
            rows += [Row.of(hazard, layer_metric(i), e, layer=i, **at) for i, e in enumerate(probe.per_layer)]
            png = layers_png({subset.subset: [e.value for e in probe.per_layer]}, {subset.subset: zero.majority})
            caption = f"{subset.subset.capitalize()}: {CAPTION}"
            artifacts.append(Artifact(f"ethics-probe-layers-{subset.subset}", png, caption=caption))
        return TaskResult(rows, artifacts)


def _score_rows(hazard: str, method: str, score: EthicsScore, at: dict[str, Any]) -> list[Row]:
    rows = [Row.of(hazard, f"{method}_accuracy", score.accuracy, **at)]
    if score.exact_match is not None:
        rows.append(Row.of(hazard, f"{method}_exact_match", score.exact_match, **at))
    return rows
