"""Text adversarial attacks: building blocks (as TextAttack splits them) and recipes, one per file.

``create(name, model, **params)`` builds a recipe's :class:`Attack` on a text classifier,
``available()`` lists the recipes; ``attack.attack(texts, labels)`` returns one
:class:`AttackResult` per text and :func:`evaluate_text_attack` summarises them with 95% intervals.
The parts live in their own modules: goal functions (``goals``), ``transformations``,
``constraints`` and ``search`` methods; see :mod:`._base` for the protocols.

Recipes: ``textfooler`` (Jin et al. 2020), ``pwws`` (Ren et al. 2019), ``deepwordbug`` (Gao et al. 2018),
``hotflip`` (Ebrahimi et al. 2018, white box), ``textgrad`` (Hou et al. 2022, white box) and ``a2t`` (Yoo & Qi
2021, the cheap attack of adversarial training).
"""

from mlsafety.robustness.text import constraints, search, transformations
from mlsafety.robustness.text._base import (
    WORD,
    Attack,
    AttackedText,
    AttackResult,
    Constraint,
    GoalFunction,
    ModelQueries,
    Problem,
    QueryResult,
    SearchMethod,
    SimilarityFn,
    Transformation,
    check_text_classifier,
)
from mlsafety.robustness.text._recipe import RECIPES, Recipe, available, create, register_text_attack
from mlsafety.robustness.text._resources import SentenceEncoder, WordVectors, minilm_encoder, minilm_word_vectors
from mlsafety.robustness.text._train import (
    A2T,
    GradientImportanceSearch,
    RobustTrainingRow,
    TextTrainingLog,
    adversarial_train_text,
    evaluate_robust_training,
)
from mlsafety.robustness.text.deepwordbug import DeepWordBug
from mlsafety.robustness.text.evaluation import TextAttackSummary, evaluate_text_attack, examples_jsonl
from mlsafety.robustness.text.goals import Targeted, Untargeted
from mlsafety.robustness.text.hotflip import HotFlip
from mlsafety.robustness.text.pwws import PWWS
from mlsafety.robustness.text.textfooler import TextFooler
from mlsafety.robustness.text.textgrad import TextGrad

__all__ = [
    "A2T",
    "PWWS",
    "RECIPES",
    "WORD",
    "Attack",
    "AttackResult",
    "AttackedText",
    "Constraint",
    "DeepWordBug",
    "GoalFunction",
    "GradientImportanceSearch",
    "HotFlip",
    "ModelQueries",
    "Problem",
    "QueryResult",
    "Recipe",
    "RobustTrainingRow",
    "SearchMethod",
    "SentenceEncoder",
    "SimilarityFn",
    "Targeted",
    "TextAttackSummary",
    "TextFooler",
    "TextGrad",
    "TextTrainingLog",
    "Transformation",
    "Untargeted",
    "WordVectors",
    "adversarial_train_text",
    "available",
    "check_text_classifier",
    "constraints",
    "create",
    "evaluate_robust_training",
    "evaluate_text_attack",
    "examples_jsonl",
    "minilm_encoder",
    "minilm_word_vectors",
    "register_text_attack",
    "search",
    "transformations",
]
