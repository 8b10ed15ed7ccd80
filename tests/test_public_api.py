"""One ``__all__`` test for every package of mlsafety: present, sorted, resolvable, public names only.

The order is ruff's RUF022 ("isort-style", enforced by ``make lint``): SCREAMING_CASE constants, then
CamelCase classes, then everything else, each group in natural order. Plain ``sorted()`` would
disagree with the linter wherever an upper-case name (``PGD``) meets a CamelCase one (``Attack``).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

import mlsafety

# Packages that are registries of implementation modules (imported for their side effect of
# registering), with no public names of their own.
NO_PUBLIC_API = {"mlsafety.audit.checks", "mlsafety.audit.views"}


def _packages() -> list[str]:
    found = ["mlsafety"]
    for info in pkgutil.walk_packages(mlsafety.__path__, "mlsafety."):
        if info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return sorted(found)


def ruff_order(name: str) -> tuple[int, list[tuple[int, int | str]]]:
    """The sort key of ruff's RUF022: case group first, then a natural order (digits as numbers)."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    parts = [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]
    return group, parts  # type: ignore[return-value]


PACKAGES = _packages()


def test_the_walk_finds_the_pillars() -> None:
    assert {"mlsafety.core", "mlsafety.robustness.attacks", "mlsafety.monitoring.ood"} <= set(PACKAGES)


@pytest.mark.parametrize("path", [p for p in PACKAGES if p not in NO_PUBLIC_API])
def test_all_is_sorted_resolvable_and_public(path: str) -> None:
    module: ModuleType = importlib.import_module(path)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{path} has no __all__"
    names = list(names)
    assert names == sorted(names, key=ruff_order), f"{path}.__all__ is not in ruff's RUF022 order"
    assert len(set(names)) == len(names), f"{path}.__all__ repeats a name"
    private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    assert not private, f"{path}.__all__ exports private names {private}"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{path}.__all__ names {missing}, which do not resolve"


def test_ruff_order_matches_the_linter_on_mixed_case() -> None:
    names = ["create", "Attack", "PGD", "APGD", "apgd_run", "ATTACKS", "AttackOutput", "x10", "x9"]
    assert sorted(names, key=ruff_order) == [
        "APGD",
        "ATTACKS",
        "PGD",
        "Attack",
        "AttackOutput",
        "apgd_run",
        "create",
        "x9",
        "x10",
    ]
