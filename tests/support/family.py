"""One conformance suite for every family registry (attacks, detectors, scanners, calibrators, ...).

A family's test module applies it in one line; pytest then runs every check over every entry::

    from tests.support.family import check_family

    test_attack_family = check_family(ATTACKS, make_params={"eps": 0.1})

The checks (test ids ``<entry>-<check>``):

- ``name``: the registry name is lower-case words joined by dashes.
- ``docstring``: the class has a docstring.
- ``param-docs``: every declared :class:`~mlsafety.core.Param` has a one-line ``doc`` (the CLI help).
- ``defaults``: ``registry.create(name, **make_params(name))`` builds a :class:`~mlsafety.core.HyperParams`
  entry whose ``get_params()`` keys are its declared parameters, in signature order.
- ``rebuild``: ``type(e)(**e.get_params())`` gives an entry with equal params; ``stored_params()`` is a
  subset of them.
- ``repr``: ``repr(e)`` shows ``name=value`` for every parameter.
- ``unknown-parameter``: an unknown keyword raises :class:`~mlsafety.core.InputError`, one line listing
  every valid parameter (through the class and through ``registry.create``).
- ``bad-values``: for each parameter with bounds (``low`` / ``high``) or ``choices``, a value just
  outside raises a one-line :class:`~mlsafety.core.InputError` that names the parameter.
- ``tags``: the entry's tags are lower-case dashed words (and within ``known_tags`` when given).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from mlsafety.core import HyperParams, InputError, Param, Registry

NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
"""Registry names and tags: lower-case words (letters, digits) joined by dashes."""

UNKNOWN = "no_such_parameter"

ParamsSpec = Callable[[str], Mapping[str, Any]] | Mapping[str, Any] | None
"""What ``make_params`` may be: None, one mapping for every entry, or a function of the entry name."""


def params_for(make_params: ParamsSpec, name: str) -> dict[str, Any]:
    """The parameters the family supplies for entry ``name`` (required ones, cheap settings)."""
    if make_params is None:
        return {}
    if callable(make_params):
        return dict(make_params(name))
    return dict(make_params)


def one_line_input_error(fn: Callable[[], object], *needles: str) -> str:
    """Call ``fn``, expecting one :class:`InputError` whose message is one line containing every needle."""
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, f"the error spans several lines: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def _same(a: Any, b: Any) -> bool:
    """Equality that also holds for tensors and arrays (element-wise, same shape)."""
    if hasattr(a, "shape") and hasattr(b, "shape"):
        return bool(a.shape == b.shape and (a == b).all())
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _bad_values(spec: Param[Any]) -> list[Any]:
    """Values just outside a parameter's bounds or choices."""
    out: list[Any] = []
    integral = spec.cast is int
    if spec.low is not None and math.isfinite(spec.low):
        low = spec.low if spec.low_open else spec.low - 1
        out.append(math.floor(low) if integral else float(low))
    if spec.high is not None and math.isfinite(spec.high):
        high = spec.high if spec.high_open else spec.high + 1
        out.append(math.ceil(high) if integral else float(high))
    if spec.choices is not None:
        if all(isinstance(c, str) for c in spec.choices):
            out.append("no-such-choice")
        elif all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in spec.choices):
            out.append(max(spec.choices) + 1)
    return out


# -- the checks: each takes (registry, name, params) -------------------------------------------
def _check_name(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    assert NAME.match(name), f"{registry.family} name {name!r} is not lower-case words joined by dashes"
    assert getattr(registry.get(name), "name", name) == name


def _check_docstring(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    cls = registry.get(name)
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} ({name}) has no docstring"


def _check_param_docs(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    cls = registry.get(name)
    assert issubclass(cls, HyperParams), f"{cls.__name__} does not declare its parameters (HyperParams)"
    missing = [k for k, spec in cls.param_specs().items() if not spec.doc.strip()]
    assert not missing, f"{cls.__name__} parameters without doc=: {', '.join(missing)}"
    assert all("\n" not in spec.doc for spec in cls.param_specs().values()), "a Param doc spans several lines"


def _check_defaults(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    entry = registry.create(name, **params)
    assert isinstance(entry, HyperParams), f"{type(entry).__name__} does not declare its parameters (HyperParams)"
    declared = list(type(entry).param_specs())
    assert list(entry.get_params()) == declared
    assert registry.parameters(name) == declared, "the constructor's signature differs from the declaration"
    for key, value in params.items():
        assert _same(entry.get_params()[key], value), (
            f"{name}: {key}={value!r} was stored as {entry.get_params()[key]!r}"
        )


def _check_rebuild(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    entry = registry.create(name, **params)
    got = entry.get_params()
    again = type(entry)(**got).get_params()
    assert list(again) == list(got)
    for key in got:
        assert _same(again[key], got[key]), f"{name}: {key} is {again[key]!r} after rebuilding, was {got[key]!r}"
    stored = entry.stored_params()
    assert set(stored) <= set(got) and all(_same(stored[k], got[k]) for k in stored)


def _check_repr(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    entry = registry.create(name, **params)
    text = repr(entry)
    assert "\n" not in text
    for key, value in entry.get_params().items():
        assert f"{key}={value!r}" in text, f"{key}={value!r} not in {text!r}"


def _check_unknown_parameter(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    cls = registry.get(name)
    valid = list(cls.param_specs()) if issubclass(cls, HyperParams) else registry.parameters(name) or []
    for build in (lambda: cls(**params, **{UNKNOWN: 1}), lambda: registry.create(name, **params, **{UNKNOWN: 1})):
        message = one_line_input_error(build, UNKNOWN, "Valid parameters: ")
        listing = message.split("Valid parameters: ", 1)[1]
        missing = [k for k in valid if k not in listing]
        assert not missing, f"{message!r} does not list {', '.join(missing)}"


def _check_bad_values(registry: Registry[Any], name: str, params: dict[str, Any]) -> None:
    cls = registry.get(name)
    assert issubclass(cls, HyperParams)
    for key, spec in cls.param_specs().items():
        for bad in _bad_values(spec):
            one_line_input_error(lambda: registry.create(name, **{**params, key: bad}), key)  # noqa: B023


def _check_tags(registry: Registry[Any], name: str, params: dict[str, Any], known: Iterable[str] | None) -> None:
    tags = registry.tags(name)
    bad = sorted(t for t in tags if not NAME.match(t))
    assert not bad, f"{name}: tags {bad} are not lower-case dashed words"
    if known is not None:
        unknown = sorted(set(tags) - set(known))
        assert not unknown, f"{name}: unknown tags {unknown}; known: {sorted(known)}"


CHECKS: dict[str, Callable[[Registry[Any], str, dict[str, Any]], None]] = {
    "name": _check_name,
    "docstring": _check_docstring,
    "param-docs": _check_param_docs,
    "defaults": _check_defaults,
    "rebuild": _check_rebuild,
    "repr": _check_repr,
    "unknown-parameter": _check_unknown_parameter,
    "bad-values": _check_bad_values,
}


def check_family(
    registry: Registry[Any],
    *,
    make_params: ParamsSpec = None,
    known_tags: Iterable[str] | None = None,
    skip: Iterable[tuple[str, str]] = (),
) -> Callable[[str, str], None]:
    """A pytest test, parametrised over every (entry, check) of ``registry``; assign it to a ``test_`` name.

    Args:
        registry: the family's registry (every registered entry is checked).
        make_params: the parameters the family supplies to build an entry (required ones such as an
            attack's ``eps``, or cheap settings): one mapping for all, or a function of the name.
        known_tags: when given, the only tags an entry may carry.
        skip: ``(entry, check)`` pairs not to run (say why beside the call).
    """
    known = None if known_tags is None else frozenset(known_tags)
    skipped = set(skip)
    cases = [
        (name, check) for name in registry.available() for check in [*CHECKS, "tags"] if (name, check) not in skipped
    ]

    @pytest.mark.parametrize(("entry", "check"), cases, ids=[f"{n}-{c}" for n, c in cases])
    def test_family_conformance(entry: str, check: str) -> None:
        params = params_for(make_params, entry)
        if check == "tags":
            _check_tags(registry, entry, params, known)
        else:
            CHECKS[check](registry, entry, params)

    test_family_conformance.__doc__ = f"Family conformance of every {registry.family} (tests/support/family.py)."
    return test_family_conformance
