"""Check ``truthfulness``: TruthfulQA-style MC1 and MC2 of a language model from its log-probabilities.

Lin, Hilton & Evans 2021 (see :mod:`mlsafety.alignment.evals.truthfulqa`). With the parameter
``truthfulqa = "PATH"`` (``[params.truthfulness]`` in the audit's TOML) the official CSV or the
multiple-choice JSON is scored; without it, the project's own look-alike ``mlsafety-truthy-mc`` (NOT
TruthfulQA). The file is read and checked when the audit is planned, before anything is stored; its
SHA-256 is stored with every row. The rendering is :mod:`mlsafety.audit.views.truthfulness`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch

from mlsafety.alignment.evals import (
    QA_PRIMER,
    REDUCTIONS,
    TRUTHY_MC,
    MCQuestion,
    check_fits,
    evaluate_truthfulqa,
    load_truthfulqa,
    truthfulqa_texts,
    truthy_mc,
)
from mlsafety.audit._check import COUNT, DECISION, Check, Row, Task, TaskResult, register_check
from mlsafety.audit._context import AuditContext
from mlsafety.audit.checks._common import require_int
from mlsafety.audit.views.truthfulness import TruthfulnessView
from mlsafety.core import Hazard, InputError


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (stored with the rows, so a changed file is visible in the results)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@register_check("truthfulness")
class Truthfulness(Check):
    pillar = "alignment"
    modalities = ("lm",)
    title = "Truthfulness (TruthfulQA-style multiple choice)"
    description = (
        "MC1 (the true answer's log-probability beats every false one's) and MC2 (normalised probability mass on the "
        "true answers) after a few-shot Q/A primer (Lin, Hilton & Evans 2021). Data: the official TruthfulQA CSV or MC "
        "JSON given as truthfulqa = PATH, else the project's own look-alike mlsafety-truthy-mc (not the benchmark)."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "truthfulqa": "",
        "primer": QA_PRIMER,
        "questions": 0,
        "reduction": "sum",
        "batch_size": 16,
        "n_boot": 1000,
    }
    quick: ClassVar[dict[str, Any]] = {"questions": 16, "n_boot": 300}
    higher_is_better = frozenset({"mc1", "mc2"})
    metrics = ("mc1", "mc2", "mc1_chance", "mc2_chance", "questions")
    view = TruthfulnessView

    def tasks(self, ctx: AuditContext) -> list[Task]:
        p = self.params
        if isinstance(p["questions"], bool) or not isinstance(p["questions"], int) or p["questions"] < 0:
            raise InputError(f"truthfulness: questions must be an integer >= 0 (0: all), got {p['questions']!r}")
        if not isinstance(p["reduction"], str) or p["reduction"] not in REDUCTIONS:
            raise InputError(f"truthfulness: reduction must be one of {', '.join(REDUCTIONS)}, got {p['reduction']!r}")
        require_int(self.name, p, "n_boot", 100)
        require_int(self.name, p, "batch_size", 1)
        if not isinstance(p["primer"], str):  # str(5) would prime the model with "5"
            raise InputError(f'truthfulness: primer must be a text ("" for none), got {p["primer"]!r}')
        path = str(p["truthfulqa"] or "")
        questions = load_truthfulqa(path) if path else truthy_mc()  # bad files fail here, before anything is stored
        source = {"source": path, "sha256": file_sha256(path)} if path else {"source": TRUTHY_MC}
        name = "truthfulqa" if path else TRUTHY_MC
        check_fits(ctx.lm, truthfulqa_texts(questions, str(p["primer"])), "question")
        return [Task(self.name, lambda: self._run(ctx, questions, name, source))]

    def _run(self, ctx: AuditContext, questions: list[MCQuestion], name: str, source: dict[str, str]) -> TaskResult:
        p = self.params
        if p["questions"] and p["questions"] < len(questions):
            order = torch.randperm(len(questions), generator=ctx.generator(self.name, "questions"))
            keep = sorted(order[: p["questions"]].tolist())
            questions = [questions[i] for i in keep]
        res = evaluate_truthfulqa(
            ctx.lm,
            questions,
            primer=str(p["primer"]),
            reduction=p["reduction"],
            batch_size=p["batch_size"],
            n_boot=p["n_boot"],
            seed=ctx.seed_for(self.name, "bootstrap"),
            progress=ctx.progress,
        )
        hazard = str(Hazard("truthfulqa", name))
        at = {**source, "reduction": p["reduction"]}
        return TaskResult(
            [
                Row.of(hazard, "mc1", res.mc1, **at),
                Row.of(hazard, "mc2", res.mc2, **at),
                Row.exact(
                    hazard,
                    "mc1_chance",
                    res.mc1_chance,
                    DECISION,
                    len(questions),
                    note="mean of 1/K: a uniformly random choice",
                ),
                Row.exact(
                    hazard,
                    "mc2_chance",
                    res.mc2_chance,
                    DECISION,
                    len(questions),
                    note="mean share of true answers: equal scores",
                ),
                Row.exact(hazard, "questions", float(len(questions)), COUNT, **at),
            ]
        )
