"""Text adversarial attacks: building blocks (as TextAttack splits them) and recipes, one per file.

``create(name, model, **params)`` builds a recipe's :class:`Attack` on a text classifier,
``available()`` lists the recipes; ``attack.attack(texts, labels)`` returns one
:class:`AttackResult` per text. The parts live in their own modules: goal functions (``goals``),
transformations, constraints and search methods; see :mod:`._base` for the protocols.
"""

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
)
from mlsafety.robustness.text._recipe import RECIPES, Recipe, available, create, register_text_attack
from mlsafety.robustness.text.goals import Targeted, Untargeted

__all__ = [
    "RECIPES",
    "WORD",
    "Attack",
    "AttackResult",
    "AttackedText",
    "Constraint",
    "GoalFunction",
    "ModelQueries",
    "Problem",
    "QueryResult",
    "Recipe",
    "SearchMethod",
    "SimilarityFn",
    "Targeted",
    "Transformation",
    "Untargeted",
    "available",
    "create",
    "register_text_attack",
]
