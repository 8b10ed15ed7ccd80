"""The family kit: hyper-parameters declared once, and the fitted-state check.

A family entry (an attack, a detector, a corruption, a scanner, ...) declares its hyper-parameters
as class attributes; the declaration alone gives the constructor, its validation (one
:class:`~mlsafety.core.InputError` line naming the parameter and the allowed values), ``repr``,
:meth:`HyperParams.get_params`, the parameters stored in result rows
(:meth:`HyperParams.stored_params`) and the CLI's help (:meth:`HyperParams.describe_params`)::

    class PGD(Attack):
        steps = Param(10, int, low=1, doc="iterations")
        step_size = Param(None, float, low=0, low_open=True, doc="step length; None: 2.5 eps / steps")
        batch_size = Param(512, int, low=1, store=False, doc="inputs attacked together")

        def __post_init__(self) -> None:   # optional: checks that involve several parameters
            ...

    PGD(eps=0.1, steps=20)      # keyword or positional, in declaration order (base class first)
    PGD(steps=0)                # InputError: PGD steps must be >= 1, got 0

A subclass may re-declare a base parameter to change its default; it keeps its place. A class
that needs more than storing may still write ``__init__`` and call ``super().__init__(**params)``.
(scikit-learn's ``get_params`` / ``_parameter_constraints`` are the model.)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, overload

from mlsafety.core._errors import InputError, NotFittedError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a parameter that has none (the caller must give it)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Param(Generic[T]):
    """One declared hyper-parameter.

    Args:
        default: the default value (``REQUIRED`` when the caller must give one).
        cast: ``int``, ``float``, ``bool``, ``str``, ``tuple`` or a callable that converts the
            given value; None stores it as given. ``None`` is accepted when the default is None.
        low, high: bounds for numbers (inclusive unless ``low_open`` / ``high_open``).
        choices: the allowed values.
        doc: one line for the CLI help and the docstring table.
        store: whether the value goes into result rows (False for engineering knobs such as a
            batch size or a chunk size that do not change the result).
        check: a function of the converted value returning a problem (a phrase) or None.
    """

    default: T = REQUIRED
    cast: Callable[[Any], T] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    store: bool = True
    check: Callable[[Any], str | None] | None = None

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Param[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Param[T] | T:
        # Reached only before the constructor stored the value (the instance's own attribute wins).
        return self if obj is None else self.default

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, owner: str, name: str, value: Any) -> Any:
        """The validated value of parameter ``name`` of ``owner``; an :class:`InputError` otherwise."""
        if value is None and (self.default is None or self.cast is None):
            return None
        v = value
        if self.cast is not None:
            try:
                v = _convert(self.cast, value)
            except (TypeError, ValueError):
                tname = getattr(self.cast, "__name__", str(self.cast))
                raise InputError(f"{owner} {name} must be {_article(tname)}, got {value!r}") from None
        if self.choices is not None and v not in self.choices:
            raise InputError(f"{owner} {name} must be one of {', '.join(map(repr, self.choices))}, got {value!r}")
        if self.low is not None or self.high is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
                raise InputError(f"{owner} {name} must be a number, got {value!r}")
            if self.low is not None and (v <= self.low if self.low_open else v < self.low):
                raise InputError(f"{owner} {name} must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}")
            if self.high is not None and (v >= self.high if self.high_open else v > self.high):
                bound = "<" if self.high_open else "<="
                raise InputError(f"{owner} {name} must be {bound} {self.high:g}, got {value!r}")
        if self.check is not None:
            problem = self.check(v)
            if problem:
                raise InputError(f"{owner} {name} {problem}, got {value!r}")
        return v


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _convert(kind: Callable[[Any], Any], value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if kind is str and not isinstance(value, str):
        raise TypeError(value)
    if kind is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(value)
        return tuple(value)
    return kind(value)


class HyperParams:
    """Base of every family entry whose hyper-parameters are declared with :class:`Param`.

    Subclasses get a generated ``__init__`` (unless they write one), with a signature that
    :func:`inspect.signature` and the registries' parameter checks read, plus ``repr``,
    :meth:`get_params`, :meth:`stored_params` and :meth:`describe_params`. After storing the
    parameters the constructor calls ``__post_init__`` when the class defines it.
    """

    _params: ClassVar[dict[str, Param[Any]]] = {}
    param_tail: ClassVar[tuple[str, ...]] = ()
    """Parameters that close the signature whatever a subclass adds (e.g. ``seed``, ``batch_size``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: dict[str, Param[Any]] = {}
        for base in reversed(cls.__mro__[1:]):
            declared.update(getattr(base, "_params", {}))
        for key, value in list(vars(cls).items()):
            if isinstance(value, Param):
                declared[key] = value  # a re-declaration keeps its place and changes the rest
        tail = [k for k in cls.param_tail if k in declared]
        declared = {**{k: p for k, p in declared.items() if k not in tail}, **{k: declared[k] for k in tail}}
        cls._params = declared
        if "__init__" not in vars(cls):
            sig = _signature(declared)

            def __init__(self: HyperParams, *args: Any, **kwargs: Any) -> None:
                _generated_init(self, *args, **kwargs)

            # Each class gets its own constructor whose signature is the declaration, so both
            # inspect.signature(cls) and inspect.signature(cls.__init__) show the parameters.
            this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            __init__.__signature__ = sig.replace(parameters=[this, *sig.parameters.values()])  # type: ignore[attr-defined]
            __init__.__qualname__ = f"{cls.__qualname__}.__init__"
            __init__.__doc__ = f"Store and validate the hyper-parameters of {cls.__name__} (see the class docstring)."
            cls.__init__ = __init__  # type: ignore[method-assign]
            cls.__signature__ = sig  # type: ignore[attr-defined]
        else:  # a hand-written constructor: inspect reads its own signature
            cls.__signature__ = None  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _generated_init(self, *args, **kwargs)

    # -- what the declaration gives ------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> dict[str, Param[Any]]:
        """The declared parameters, in signature order."""
        return dict(cls._params)

    def get_params(self) -> dict[str, Any]:
        """Every declared hyper-parameter with its value (``type(self)(**p)`` rebuilds the entry)."""
        return {k: getattr(self, k) for k in self._params}

    def stored_params(self) -> dict[str, Any]:
        """The hyper-parameters that change results (``store=True``), as result rows record them."""
        return {k: getattr(self, k) for k, p in self._params.items() if p.store}

    @classmethod
    def describe_params(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, doc)`` for every parameter, for help texts (default ``REQUIRED`` if none)."""
        return [(k, p.default, p.doc) for k, p in cls._params.items()]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _owner(obj: object) -> str:
    return getattr(obj, "name", None) or type(obj).__name__


def _generated_init(self: HyperParams, *args: Any, **kwargs: Any) -> None:
    specs = type(self)._params
    sig = _signature(specs)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        listing = ", ".join(specs) or "none"
        raise InputError(f"bad parameters for {_owner(self)}: {exc}. Valid parameters: {listing}") from None
    bound.apply_defaults()
    for key, value in bound.arguments.items():
        setattr(self, key, specs[key].convert(_owner(self), key, value))
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _signature(specs: Mapping[str, Param[Any]]) -> inspect.Signature:
    params = []
    seen_default = False
    for key, p in specs.items():
        if p.required and not seen_default:
            params.append(inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD))
        elif p.required:
            params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY))
        else:
            seen_default = True
            params.append(inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default))
    params.sort(key=lambda q: q.kind == inspect.Parameter.KEYWORD_ONLY)
    return inspect.Signature(params)


def check_is_fitted(obj: object, attributes: Iterable[str] | None = None, hint: str = "call .fit(...) first") -> None:
    """Raise :class:`NotFittedError` unless ``obj`` holds its learned state.

    Learned state is every attribute whose name ends in ``_`` (scikit-learn's convention); with
    ``attributes`` given, those must all be set (not None).
    """
    if attributes is None:
        fitted = any(k.endswith("_") and not k.startswith("_") and v is not None for k, v in vars(obj).items())
    else:
        fitted = all(getattr(obj, a, None) is not None for a in attributes)
    if not fitted:
        raise NotFittedError(f"{_owner(obj)} is not fitted; {hint}")
