"""Summaries of a text attack's results, each with a 95% interval, and the examples as artifacts.

Definitions follow TextAttack's attack summary: examples the model already misclassifies are
skipped; the **success rate** is the share of attacked (not skipped) examples the attack flipped;
**original accuracy** and **accuracy under attack** the shares of all examples classified correctly
before and after the attack, read from the predictions (a targeted text whose target is its true
class is skipped, the goal being met, yet classified correctly: TextAttack's summary, which counts
every skipped example as misclassified, would count it wrong);
the **perturbed-word share** and the **sentence similarity** are means over successful attacks;
**queries** the mean over attacked examples. Proportions carry exact (Clopper-Pearson) intervals,
means percentile-bootstrap intervals (seeded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlsafety.core import InputError
from mlsafety.metrics import Estimate, bootstrap_mean, proportion
from mlsafety.robustness.text._base import AttackResult


@dataclass(frozen=True)
class TextAttackSummary:
    """What :func:`evaluate_text_attack` returns (an Estimate is None when there is nothing to average).

    Attributes:
        n: examples; attacked: not skipped; succeeded: flipped.
        original_accuracy, accuracy_under_attack, success_rate: proportions.
        perturbed_share, queries, similarity: means.
    """

    n: int
    attacked: int
    succeeded: int
    original_accuracy: Estimate
    accuracy_under_attack: Estimate
    success_rate: Estimate | None
    perturbed_share: Estimate | None
    queries: Estimate | None
    similarity: Estimate | None

    def metrics(self) -> dict[str, Estimate]:
        """The estimates by metric name (lower-case with underscores), those that exist."""
        out = {
            "original_accuracy": self.original_accuracy,
            "accuracy_under_attack": self.accuracy_under_attack,
            "success_rate": self.success_rate,
            "perturbed_word_share": self.perturbed_share,
            "queries_per_example": self.queries,
            "sentence_similarity": self.similarity,
        }
        return {k: v for k, v in out.items() if v is not None}


def evaluate_text_attack(results: Sequence[AttackResult], seed: int = 0, n_boot: int = 1000) -> TextAttackSummary:
    """Summarise ``results`` (one per example) with 95% intervals (see the module docstring)."""
    if not results:
        raise InputError("no attack results to summarise; attack at least one text")
    n = len(results)
    attacked = [r for r in results if r.status != "skipped"]
    won = [r for r in attacked if r.success]
    correct = sum(1 for r in results if r.original_pred == r.label)
    held = sum(1 for r in results if r.perturbed_pred == r.label)

    def mean(values: list[float], name: str) -> Estimate | None:
        if not values:
            return None
        return bootstrap_mean(torch.tensor(values, dtype=torch.float64), n_boot=n_boot, seed=seed, name=name)

    sims = [r.similarity for r in won if r.similarity is not None]
    return TextAttackSummary(
        n=n,
        attacked=len(attacked),
        succeeded=len(won),
        original_accuracy=proportion(correct, n),
        accuracy_under_attack=proportion(held, n),
        success_rate=proportion(len(won), len(attacked)) if attacked else None,
        perturbed_share=mean([r.perturbed_share for r in won], "text-attack-perturbed-share"),
        queries=mean([float(r.queries) for r in attacked], "text-attack-queries"),
        similarity=mean([float(s) for s in sims], "text-attack-similarity"),
    )


def examples_jsonl(results: Sequence[AttackResult], only_successful: bool = False) -> str:
    """The results as JSON lines (changed words marked ``[[word]]`` in ``marked``): what artifacts store."""
    rows: list[dict[str, Any]] = [r.as_dict() for r in results if r.success or not only_successful]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
