"""The recipe registry: a recipe is a named, declared set of hyper-parameters that builds an :class:`Attack`.

``create(name, model, **params)`` builds the recipe's :class:`~mlsafety.robustness.text.Attack` on a
victim; ``available()`` lists the names; ``RECIPES.tagged("quick")`` selects by tag (``black-box``,
``white-box``, ``word-level``, ``char-level``, ``quick``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from mlsafety.core import HyperParams, ModelLike, Param, Registry
from mlsafety.robustness.text._base import Attack


class Recipe(HyperParams):
    """Base of text-attack recipes: declared hyper-parameters and :meth:`build`.

    Every recipe takes ``query_budget`` (model queries per example, None: no limit), ``seed`` and
    ``batch_size`` (these close its signature); a subclass declares its own and writes :meth:`build`.
    """

    query_budget = Param(None, int, low=1, doc="model queries per example at most (None: no limit)")
    seed = Param(0, int, doc="seed of the per-example generators (random character edits)")
    batch_size = Param(
        None, int, low=1, store=False, doc="texts per forward pass at most (None: 32 on the CPU, 128 on a GPU)"
    )

    param_tail = ("query_budget", "seed", "batch_size")
    name: ClassVar[str]

    def build(self, model: ModelLike) -> Attack:
        """The attack on ``model``."""
        raise NotImplementedError


RECIPES: Registry[Recipe] = Registry("text attack")


def register_text_attack(name: str, *, tags: tuple[str, ...] = ()) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator registering a :class:`Recipe` under ``name``."""
    return RECIPES.register(name, tags=tags)


def create(name: str, model: ModelLike, **params: Any) -> Attack:
    """Build recipe ``name`` on ``model`` (an unknown name or parameter is one :class:`InputError` line)."""
    return RECIPES.create(name, **params).build(model)


def available() -> list[str]:
    """Registered recipe names, sorted."""
    return RECIPES.available()
