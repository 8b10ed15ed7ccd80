"""The ``adversarial`` check on a text classifier: the text-attack recipes of its profile, with intervals.

Hazards ``text-adversarial/<recipe>`` are a fixed subset of the test texts (``text_n`` drawn with the
run seed, kept in test order) attacked by the registry recipe ``<recipe>``
(:func:`mlsafety.robustness.text.create`) with ``text_budget`` model queries per example; a text the
model already gets wrong is not attacked (TextAttack's "skipped"), and a text the attack fails on
stays as it was, among them a text with no word the recipe may change (only stop words, as "It is."): a
failed attack counted in every row (robust under attack), not the end of the check. The hazard's dataset
holds the resulting texts, so every check that reads hazards (defence in depth: does the monitor catch the
texts that fool the model?) sees them through the shared forward pass like any other.

Rows per recipe (each estimate with its 95% interval: exact Clopper-Pearson for shares of examples,
seeded bootstrap for means): ``attack_success_rate`` (among attacked texts), ``accuracy_under_attack``
(among all texts of the subset), ``perturbed_word_share`` and ``sentence_similarity`` (among
successful attacks), ``queries_per_example`` (among attacked texts), ``original_accuracy_subset``; the
adversarial examples are stored as a JSON-lines artifact with the changed words marked ``[[like this]]``.

Profiles (stated once, in :data:`TEXT_DEFAULTS` / :data:`TEXT_QUICK`, merged into the check's own):
full runs ``deepwordbug`` (black box, character edits) and ``hotflip`` (white box) on more texts; quick
runs ``deepwordbug`` on few texts with a small query budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from mlsafety.audit._check import CHECKS, Artifact, Check, Row, Task, TaskResult
from mlsafety.audit._context import AuditContext, hazard_provider
from mlsafety.audit.checks._common import bind, require_names
from mlsafety.core import ArrayDataset, Hazard, InputError, Outputs, TextDataset, Texts, forward
from mlsafety.robustness import text
from mlsafety.systemic import DefenceInDepthEvaluator, HazardResult, Monitor, Outcome, wrong_margin

KIND = "text-adversarial"
CHECK = "adversarial"
"""The check whose parameters the text hazards read (looked up in the registry: it imports this module)."""
TEXT_DEFAULTS: dict[str, Any] = {
    "text_recipes": ["deepwordbug", "hotflip"],
    "text_n": 100,
    "text_budget": 500,
    "text_params": {},
}
"""The full profile's text settings: recipes, texts attacked, queries per text, per-recipe parameters."""
TEXT_QUICK: dict[str, Any] = {"text_recipes": ["deepwordbug"], "text_n": 20, "text_budget": 100}
"""The quick profile's text settings (a cheap recipe on few texts)."""
TEXT_METRICS = (
    "attack_success_rate", "accuracy_under_attack", "perturbed_word_share", "queries_per_example",
    "sentence_similarity", "original_accuracy_subset",
)  # fmt: skip
EXAMPLES_MIME = "application/x-ndjson"


class TextAdversarialSet(TextDataset):
    """The texts of a ``text-adversarial`` hazard (perturbed where the attack succeeded) and what made them.

    Attributes:
        index: positions of these texts in the test data.
        recipe: the registry name of the recipe.
        results: one :class:`~mlsafety.robustness.text.AttackResult` per text.
    """

    def __init__(self, results: list[text.AttackResult], y: torch.Tensor, index: torch.Tensor, recipe: str,
                 name: str) -> None:  # fmt: skip
        super().__init__(Texts([r.perturbed for r in results]), y, name=name, description=f"{recipe} text attack")
        self.index = index
        self.recipe = recipe
        self.results = results


def text_params(ctx: AuditContext, check: type[Check]) -> dict[str, Any]:
    """The check's text settings in this audit (its defaults, the quick profile's, the user's)."""
    from mlsafety.audit.checks._common import params_of

    p = params_of(ctx, check)
    return {k: p.get(k, v) for k, v in TEXT_DEFAULTS.items()}


def plan(params: dict[str, Any]) -> list[str]:
    """The recipes to run, checked (unknown names and parameters fail in one line, before anything runs)."""
    if not params["text_recipes"] and isinstance(params["text_recipes"], (list, tuple)):
        raise InputError("adversarial text_recipes is empty; name at least one recipe, e.g. [deepwordbug]")
    names = list(dict.fromkeys(require_names(CHECK, params, "text_recipes", "['deepwordbug']", unique=False)))
    n, budget = params["text_n"], params["text_budget"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"adversarial text_n must be a number of texts >= 1, got {n!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise InputError(f"adversarial text_budget must be a number of queries >= 1 (or absent), got {budget!r}")
    extra = params["text_params"]
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        raise InputError(
            f"adversarial text_params must map recipe names to their parameters, e.g. {{deepwordbug = {{max_edits = "
            f"20}}}}, got {extra!r}"
        )
    stray = sorted(set(extra) - set(names))
    if stray:  # a typo or a recipe not run: its parameters would be dropped without a word
        raise InputError(
            f"adversarial text_params are given for {', '.join(map(repr, stray))}, which this audit does not run "
            f"(text_recipes: {', '.join(names)}); fix the name or drop its parameters"
        )
    for name in names:
        text.RECIPES.get(name)
        text.RECIPES.check_parameters(name, {**extra.get(name, {}), "query_budget": budget, "seed": 0})
    return names


def hazard_of(recipe: str) -> Hazard:
    return Hazard(KIND, recipe, source="adversarial")


def _subset(ctx: AuditContext, n: int) -> torch.Tensor:
    total = len(ctx.data.test)
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=ctx.generator(KIND, "subset"))[:n].sort().values


@hazard_provider(KIND)
def _text_adversarial(ctx: AuditContext, hazard: Hazard) -> ArrayDataset:
    """``text-adversarial/<recipe>``: the check's text subset attacked (deterministic given the seed)."""
    recipe = hazard.name
    if recipe is None or recipe not in text.available():
        raise InputError(
            f"unknown hazard {str(hazard)!r}; use {KIND}/<recipe> with one of {', '.join(text.available())}"
        )
    p = text_params(ctx, CHECKS.get(CHECK))
    index = _subset(ctx, int(p["text_n"]))
    test = ctx.data.test
    texts = [str(t) for t in test.x[index]]
    y = test.y[index]
    extra = dict(dict(p["text_params"]).get(recipe, {}))
    attack = text.create(recipe, ctx.model, **extra, query_budget=p["text_budget"], seed=ctx.seed_for(KIND, recipe))
    results = attack.attack(texts, y)
    data = TextAdversarialSet(results, y, index, recipe, name=f"{test.name}-{recipe}")
    return cast(ArrayDataset, data)  # a text dataset where providers type image data, as the clean one on text


def tasks(check: Check, ctx: AuditContext) -> list[Task]:
    """One task per recipe: its rows and its examples."""
    names = plan(text_params(ctx, type(check)))
    return [Task(str(hazard_of(n)), bind(_recipe_task, ctx, n)) for n in names]


def hazards(check: Check, ctx: AuditContext) -> list[Hazard]:
    return [hazard_of(n) for n in plan(text_params(ctx, type(check)))]


def _recipe_task(ctx: AuditContext, recipe: str) -> TaskResult:
    hazard = hazard_of(recipe)
    data = ctx.hazard(hazard)
    assert isinstance(data, TextAdversarialSet)
    p = text_params(ctx, CHECKS.get(CHECK))
    s = text.evaluate_text_attack(data.results, seed=ctx.seed_for(KIND, recipe, "intervals"))
    key = str(hazard)
    info = {"recipe": recipe, "subset": len(data), "query_budget": p["text_budget"]}
    estimates = {
        "attack_success_rate": s.success_rate,
        "accuracy_under_attack": s.accuracy_under_attack,
        "perturbed_word_share": s.perturbed_share,
        "queries_per_example": s.queries,
        "sentence_similarity": s.similarity,
        "original_accuracy_subset": s.original_accuracy,
    }
    rows = [Row.of(key, metric, est, **info) for metric, est in estimates.items() if est is not None]
    artifacts = [
        Artifact(f"text-adversarial-examples-{recipe}", text.examples_jsonl(data.results).encode("utf-8"),
                 EXAMPLES_MIME, f"{recipe}: every attacked text, changed words marked [[like this]]"),
    ]  # fmt: skip
    return TaskResult(rows, artifacts)


# --- the adaptive variant (defence in depth) -----------------------------------------------------


class _MonitoredQueries(text.ModelQueries):
    """Model queries that keep the last batch's texts and forward outputs (logits and features), so a
    monitor-aware goal can score the monitor's detector on exactly the texts it judges."""

    def __init__(self, base: text.ModelQueries) -> None:
        super().__init__(base.clf, base.batch_size)
        self.last: tuple[Texts, Outputs] | None = None

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        batch = Texts(list(texts))
        out = forward(self.clf, batch, self.batch_size)
        self.calls += -(-len(batch) // self.batch_size)
        self.texts += len(batch)
        self.last = (batch, out)
        return out.logits.float().cpu()


class MonitorAwareGoal(text.GoalFunction):
    """The adaptive attacker's goal on a guarded text model: misclassified *and* not flagged by the monitor.

    The text counterpart of :class:`mlsafety.systemic.MonitorAwareObjective` (same selective score:
    the margin ``max_{j != y} z_j - z_y`` (at most 0) while the text is classified correctly, then
    ``1 / (1 + v)`` with ``v`` the monitor's violation), read from the outputs of the texts just queried.
    """

    name = "monitor-aware"

    def __init__(self, queries: _MonitoredQueries, monitor: Monitor, evaluator: DefenceInDepthEvaluator) -> None:
        self.queries = queries
        self.monitor = monitor
        self.evaluator = evaluator

    def _violation(self, logits: torch.Tensor) -> torch.Tensor:
        assert self.queries.last is not None and len(self.queries.last[0]) == logits.shape[0]
        texts, out = self.queries.last
        scores = None
        if self.monitor.detector is not None:
            scores = next(iter(self.evaluator.scores(texts, out, [self.monitor.detector]).values())).cpu()  # type: ignore[arg-type]  # texts, as for text hazards
        return self.monitor.violation(scores, out.probs.amax(dim=1).cpu()).float()

    def score(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        y = torch.full((logits.shape[0],), label, dtype=torch.long)
        m = wrong_margin(logits.float(), y)
        return torch.where(m > 0, (1.0 + self._violation(logits).clamp_min(0)).reciprocal(), m.clamp_max(0))

    def reached(self, logits: torch.Tensor, label: int, target: int | None) -> torch.Tensor:
        return (logits.argmax(dim=-1) != label) & (self._violation(logits) <= 0)


def adaptive_result(
    ctx: AuditContext, hazard: Hazard, evaluator: DefenceInDepthEvaluator, outcome: Outcome
) -> tuple[HazardResult, dict[str, Any]]:
    """Defence in depth's adaptive variant of a ``text-adversarial`` hazard: the same recipe, budget and
    texts, with :class:`MonitorAwareGoal` as its goal; the outcome is the per-text worst case of both."""
    data = ctx.hazard(hazard)
    assert isinstance(data, TextAdversarialSet) and hazard.name is not None
    p = text_params(ctx, CHECKS.get(CHECK))
    extra = dict(dict(p["text_params"]).get(hazard.name, {}))
    attack = text.create(hazard.name, ctx.model, **extra, query_budget=p["text_budget"],
                         seed=ctx.seed_for(KIND, hazard.name, "adaptive"))  # fmt: skip
    queries = _MonitoredQueries(attack.queries)
    attack.queries = queries
    attack.goal = MonitorAwareGoal(queries, evaluator.monitor, evaluator)
    results = attack.attack([r.original for r in data.results], data.y)
    texts = Texts([r.perturbed for r in results])
    out = forward(ctx.model, texts, ctx.batch_size)
    result = evaluator.adaptive(outcome, texts, out, data.y.to(out.logits.device))  # type: ignore[arg-type]
    won = sum(r.success for r in results)
    info = {"attack": hazard.name, "goal": "misclassified and not flagged (monitor-aware)",
            "adaptive_successes": won, "monitor": evaluator.monitor.name}  # fmt: skip
    return result, info
