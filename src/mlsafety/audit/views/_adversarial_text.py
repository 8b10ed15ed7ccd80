"""How the ``adversarial`` check's text-attack rows read in the report: a headline and one table line per recipe."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, fmt_ci, fmt_value
from mlsafety.core import Hazard

KIND = "text-adversarial"
COLUMNS = (
    ("accuracy_under_attack", "accuracy under attack [95% CI]"),
    ("attack_success_rate", "success rate [95% CI]"),
    ("perturbed_word_share", "share of words perturbed [95% CI]"),
    ("queries_per_example", "queries per attacked text [95% CI]"),
    ("sentence_similarity", "similarity [95% CI]"),
)


def _by_recipe(rows: Sequence[StoredRow]) -> dict[str, dict[str, StoredRow]]:
    by: dict[str, dict[str, StoredRow]] = {}
    for r in rows:
        h = Hazard.parse(r.hazard)
        if h.kind == KIND and h.name is not None:
            by.setdefault(h.name, {})[r.metric] = r
    return by


def text_headlines(rows: Sequence[StoredRow]) -> list[Headline]:
    """Accuracy under attack of the first recipe (higher is better)."""
    for recipe, m in _by_recipe(rows).items():
        if "accuracy_under_attack" in m:
            return [Headline(f"Accuracy under text attack ({recipe})", m["accuracy_under_attack"])]
    return []


def text_tables(rows: Sequence[StoredRow]) -> list[Table]:
    """One line per recipe; empty when the audit attacked no text."""
    body = []
    for recipe, m in _by_recipe(rows).items():
        cells = [recipe]
        for metric, _ in COLUMNS:
            r = m.get(metric)
            cells.append("" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}")
        n = m.get("accuracy_under_attack")
        cells.append("" if n is None or n.n is None else str(n.n))
        body.append(cells)
    if not body:
        return []
    note = (
        "Success rate and queries among the texts attacked (those the model classified correctly); share of words "
        "perturbed and similarity among successes."
    )
    return [Table("Text attacks", ["recipe", *(c for _, c in COLUMNS), "n"], body, note)]
