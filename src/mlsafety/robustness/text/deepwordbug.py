"""DeepWordBug (Gao et al., "Black-box Generation of Adversarial Text Sequences to Evade Deep Learning
Classifiers", IEEE S&P Workshops 2018), as TextAttack's ``DeepWordBugGao2018`` recipe composes it.

Words are ranked by the score gain of replacing them by the unknown token, then each in turn gets
one random edit of each kind (swap two neighbouring characters, delete one, insert one, substitute
one by a neighbouring key) and the best is kept; stop words and changed words stay, and the whole
text is at most ``max_edits`` character edits from the original. Deviations: the paper's scoring
functions (replace-one, temporal head/tail) are replaced by the unknown-token ranking as in
TextAttack; the substitution uses QWERTY neighbours rather than any letter (the issue's choice).
"""

from __future__ import annotations

from mlsafety.core import ModelLike, Param, as_classifier
from mlsafety.robustness.text._base import Attack, check_text_classifier
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text._resources import minilm_similarity
from mlsafety.robustness.text.constraints import EditDistance, RepeatModification, StopWords
from mlsafety.robustness.text.goals import Untargeted
from mlsafety.robustness.text.search import GreedyWordImportance
from mlsafety.robustness.text.transformations import CharEdits


@register_text_attack("deepwordbug", tags=("black-box", "char-level", "quick"))
class DeepWordBug(Recipe):
    """DeepWordBug (Gao et al. 2018); see the module docstring."""

    max_edits = Param(30, int, low=1, doc="character edit distance from the original at most")

    def build(self, model: ModelLike) -> Attack:
        clf = as_classifier(model)
        check_text_classifier(clf, "deepwordbug")
        return Attack(
            clf,
            Untargeted(),
            CharEdits(),
            [RepeatModification(), StopWords(), EditDistance(self.max_edits)],
            GreedyWordImportance("unk"),
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            similarity=minilm_similarity,
            seed=self.seed,
            name="deepwordbug",
        )
