"""The family conformance suite itself: it passes a well-made entry and catches each kind of flaw."""

from __future__ import annotations

from typing import Any

import pytest

from mlsafety.core import HyperParams, InputError, Param, Registry
from tests.support.family import CHECKS, check_family, params_for

GOOD: Registry[Any] = Registry("toy")


@GOOD.register("good-entry", tags=("quick", "image"))
class Good(HyperParams):
    """A well-made entry."""

    eps = Param(cast=float, low=0, high=1, doc="radius")
    mode = Param("a", str, choices=("a", "b"), doc="mode")
    steps = Param(3, int, low=1, doc="iterations")
    chunk = Param(64, int, low=1, store=False, doc="rows at once")


# The suite applied to a registry holding only the good entry, as a family's test module does.
test_good_family = check_family(GOOD, make_params={"eps": 0.5}, known_tags=("quick", "image"))


def _run(registry: Registry[Any], name: str, check: str, params: dict[str, Any] | None = None) -> None:
    CHECKS[check](registry, name, params or {})


def test_a_class_without_docstring_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("plain")
    class Plain(HyperParams):
        k = Param(1, int, low=1, doc="k")

    with pytest.raises(AssertionError, match="no docstring"):
        _run(reg, "plain", "docstring")


def test_a_param_without_doc_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("undocumented")
    class Undocumented(HyperParams):
        """Doc."""

        k = Param(1, int, low=1)

    with pytest.raises(AssertionError, match="without doc"):
        _run(reg, "undocumented", "param-docs")


def test_an_entry_not_declaring_its_params_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("legacy")
    class Legacy:
        """Hand-written constructor, no declaration."""

        def __init__(self, k: int = 1) -> None:
            self.k = k

    with pytest.raises(AssertionError, match="HyperParams"):
        _run(reg, "legacy", "defaults")


def test_a_constructor_that_drops_a_value_fails_rebuild() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("lossy")
    class Lossy(HyperParams):
        """Stores something other than what it was given."""

        k = Param(1, int, low=1, doc="k")

        def __post_init__(self) -> None:
            self.k = self.k + 1

    with pytest.raises(AssertionError, match="after rebuilding"):
        _run(reg, "lossy", "rebuild")


def test_a_bound_not_enforced_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("unchecked")
    class Unchecked(HyperParams):
        """Declares a bound its hand-written constructor skips."""

        k = Param(1, int, low=1, doc="k")

        def __init__(self, k: int = 1) -> None:
            self.k = k

    with pytest.raises(pytest.fail.Exception):
        _run(reg, "unchecked", "bad-values")


def test_a_multi_line_error_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("chatty")
    class Chatty(HyperParams):
        """Checks its bound by hand, with a two-line message."""

        k = Param(1, int, low=1, doc="k")

        def __init__(self, k: int = 1) -> None:
            if k < 1:
                raise InputError("k is bad\nuse k >= 1")
            self.k = k

    with pytest.raises(AssertionError, match="several lines"):
        _run(reg, "chatty", "bad-values")


def test_a_custom_repr_hiding_params_fails() -> None:
    reg: Registry[Any] = Registry("toy")

    @reg.register("terse")
    class Terse(HyperParams):
        """Hides its parameters from repr."""

        k = Param(1, int, doc="k")

        def __repr__(self) -> str:
            return "Terse()"

    with pytest.raises(AssertionError, match="k=1"):
        _run(reg, "terse", "repr")


def test_unknown_tags_fail() -> None:
    from tests.support.family import _check_tags

    with pytest.raises(AssertionError, match="unknown tags"):
        _check_tags(GOOD, "good-entry", {}, known=("quick",))


def test_params_for_accepts_a_mapping_or_a_function() -> None:
    assert params_for(None, "x") == {}
    assert params_for({"eps": 0.1}, "x") == {"eps": 0.1}
    assert params_for(lambda n: {"name_len": len(n)}, "abc") == {"name_len": 3}
