"""The family kit: declared hyper-parameters give the constructor, validation, repr and params."""

from __future__ import annotations

import inspect

import pytest

from mlsafety.core import HyperParams, InputError, NotFittedError, Param, Registry, check_is_fitted
from mlsafety.core._params import REQUIRED


class Base(HyperParams):
    eps = Param(cast=float, low=0, doc="radius")  # no default: required
    norm = Param("linf", str, choices=("linf", "l2"), doc="norm")
    batch_size = Param(512, int, low=1, store=False, doc="inputs together")


class Child(Base):
    steps = Param(10, int, low=1, doc="iterations")
    step_size = Param(None, float, low=0, low_open=True, doc="None: automatic")
    norm = Param("l2", str, choices=("linf", "l2"), doc="norm")  # a new default, same place

    def __post_init__(self) -> None:
        if self.step_size is not None and self.step_size > self.eps:
            raise InputError("Child step_size must not exceed eps")


def test_signature_follows_the_declaration_base_first() -> None:
    sig = inspect.signature(Child)
    assert list(sig.parameters) == ["eps", "norm", "batch_size", "steps", "step_size"]
    assert sig.parameters["norm"].default == "l2"
    assert sig.parameters["eps"].default is inspect.Parameter.empty


def test_values_are_converted_and_stored() -> None:
    c = Child(0.5, steps=3.0)
    assert c.steps == 3 and isinstance(c.steps, int) and c.eps == 0.5 and c.norm == "l2"
    assert c.get_params() == {"eps": 0.5, "norm": "l2", "batch_size": 512, "steps": 3, "step_size": None}
    assert c.stored_params() == {"eps": 0.5, "norm": "l2", "steps": 3, "step_size": None}
    assert repr(c) == "Child(eps=0.5, norm='l2', batch_size=512, steps=3, step_size=None)"
    assert type(c)(**c.get_params()).get_params() == c.get_params()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"eps": -1}, "eps must be >= 0"),
        ({"eps": 0.1, "steps": 0}, "steps must be >= 1"),
        ({"eps": 0.1, "steps": 2.5}, "steps must be an int"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be one of 'linf', 'l2'"),
        ({"eps": 0.1, "step_size": 0.0}, "step_size must be > 0"),
        ({"eps": 0.1, "step_size": 0.5}, "must not exceed eps"),
        ({"eps": 0.1, "stepz": 1}, "Valid parameters: eps, norm, batch_size, steps, step_size"),
        ({}, "missing a required argument: 'eps'"),
        ({"eps": True}, "eps must be a float"),
    ],
)
def test_bad_values_raise_one_line_naming_the_parameter(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        Child(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_describe_params_serves_help_texts() -> None:
    rows = {name: (default, doc) for name, default, doc in Child.describe_params()}
    assert rows["steps"] == (10, "iterations") and rows["eps"][0] is REQUIRED


def test_a_hand_written_constructor_keeps_its_own_signature() -> None:
    class Custom(Base):
        def __init__(self, eps: float, extra: int = 1) -> None:
            super().__init__(eps)
            self.extra = extra

    assert list(inspect.signature(Custom).parameters) == ["eps", "extra"]
    assert Custom(0.2, extra=3).get_params()["eps"] == 0.2


def test_registry_tags_select_entries() -> None:
    reg: Registry[HyperParams] = Registry("thing")

    @reg.register("a-one", tags=("quick", "image"))
    class One(Base): ...

    @reg.register("b-two", tags=("image",))
    class Two(Base): ...

    assert reg.tagged("image") == ["a-one", "b-two"] and reg.tagged("quick", "image") == ["a-one"]
    assert reg.tags("b-two") == frozenset({"image"})
    with pytest.raises(ValueError):
        reg.register("c", tags=("Bad Tag",))


def test_check_is_fitted() -> None:
    c = Child(0.1)
    with pytest.raises(NotFittedError, match="Child is not fitted"):
        check_is_fitted(c)
    c.mean_ = 1.0
    check_is_fitted(c)
    with pytest.raises(NotFittedError):
        check_is_fitted(c, ["cov_"])


def test_the_generated_constructor_shows_its_signature() -> None:
    # Callers that read inspect.signature(cls.__init__) (not only cls) see the declared parameters.
    assert list(inspect.signature(Child.__init__).parameters) == [
        "self",
        "eps",
        "norm",
        "batch_size",
        "steps",
        "step_size",
    ]
    assert Child.__init__ is not Base.__init__


def test_param_tail_closes_the_signature() -> None:
    class Tail(Base):
        param_tail = ("batch_size",)
        steps = Param(10, int, low=1, doc="iterations")

    assert list(inspect.signature(Tail).parameters) == ["eps", "norm", "steps", "batch_size"]
    assert Tail(0.1, "l2", 3).steps == 3
