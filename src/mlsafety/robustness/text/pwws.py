"""PWWS (Ren et al., "Generating Natural Language Adversarial Examples through Probability Weighted Word
Saliency", ACL 2019), as TextAttack's ``PWWSRen2019`` recipe composes it.

WordNet synonyms replace words in the order of probability-weighted word saliency (softmax of the
score gain of replacing the word by the unknown token, times the best replacement's score gain);
stop words and already-changed words stay. Deviations: WordNet comes from Debian's package through
NLTK's reader (the same database TextAttack reads); the paper's named-entity substitutions are not
used (neither does TextAttack's recipe); stop words are scikit-learn's list plus clitics.
"""

from __future__ import annotations

from mlsafety.core import ModelLike, as_classifier
from mlsafety.robustness.text._base import Attack, check_text_classifier
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text._resources import minilm_similarity, wordnet
from mlsafety.robustness.text.constraints import RepeatModification, StopWords
from mlsafety.robustness.text.goals import Untargeted
from mlsafety.robustness.text.search import GreedyWordImportance
from mlsafety.robustness.text.transformations import WordNetSwap


@register_text_attack("pwws", tags=("black-box", "word-level"))
class PWWS(Recipe):
    """PWWS (Ren et al. 2019); see the module docstring."""

    def build(self, model: ModelLike) -> Attack:
        clf = as_classifier(model)
        check_text_classifier(clf, "pwws")
        wordnet()  # a missing WordNet is one line naming its packages before anything runs
        return Attack(
            clf,
            Untargeted(),
            WordNetSwap(),
            [RepeatModification(), StopWords()],
            GreedyWordImportance("pwws"),
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            similarity=minilm_similarity,
            seed=self.seed,
            name="pwws",
        )
