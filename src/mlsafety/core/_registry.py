"""A small decorator registry with a factory, shared by every family (attacks, detectors, ...)."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from mlsafety.core._errors import InputError, UnknownNameError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Registry(Generic[T]):
    """Maps lower-case dashed names to classes of one family.

    Example:
        >>> attacks: Registry[Attack] = Registry("attack")
        >>> @attacks.register("pgd")
        ... class PGD(Attack): ...
        >>> attacks.create("pgd", eps=0.1)
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, type[T]] = {}
        self._tags: dict[str, frozenset[str]] = {}

    def register(self, name: str, *, tags: Iterable[str] = ()) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers ``cls`` under ``name`` (a duplicate name is an error).

        ``tags`` are plain words the callers select on instead of lists of names (``quick``: in
        the reduced audit profile; ``image`` / ``text``: the modalities it supports; ``needs-grad``
        ...); :meth:`tagged` lists the entries carrying one, :meth:`tags` an entry's tags.
        """
        if not _NAME.match(name):
            raise ValueError(f"{self.family} name {name!r} must be lower-case words joined by dashes")
        tag_set = frozenset(tags)
        bad = sorted(t for t in tag_set if not _NAME.match(t))
        if bad:
            raise ValueError(f"{self.family} {name!r}: tag {bad[0]!r} must be lower-case words joined by dashes")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is already registered by {self._entries[name]!r}")
            self._entries[name] = cls
            self._tags[name] = tag_set
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; an unknown name (or one that is not a text) raises
        :class:`UnknownNameError`."""
        if not isinstance(name, str):
            raise UnknownNameError(
                f"a {self.family} is named by a text, got {name!r}. Available: {', '.join(self.available())}"
            )
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.family} {name!r}.{hint} Available: {', '.join(self.available())}"
            ) from None

    def create(self, name: str, **params: Any) -> T:
        """Instantiate the entry ``name`` with hyper-parameters ``params``.

        Raises:
            UnknownNameError: ``name`` is not registered (the message lists the registered names).
            InputError: a parameter the entry does not take, or a required one missing (the message
                lists the entry's parameters).
        """
        cls = self.get(name)
        self.check_parameters(name, params)
        try:
            return cls(**params)
        except TypeError as exc:
            raise InputError(f"bad parameters for {self.family} {name!r}: {exc}") from None

    def parameters(self, name: str) -> list[str] | None:
        """The hyper-parameter names the entry ``name`` takes, in signature order (None: any, ``**kwargs``)."""
        params = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            return None
        return [p.name for p in params]

    def check_parameters(self, name: str, params: dict[str, Any]) -> None:
        """Raise :class:`InputError` unless the entry ``name`` takes exactly the keywords ``params``."""
        valid = self.parameters(name)
        if valid is None:
            return
        listing = ", ".join(valid) if valid else "none"
        unknown = [k for k in params if k not in valid]
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InputError(
                f"{self.family} {name!r} has no parameter {', '.join(map(repr, unknown))}.{hint} "
                f"Valid parameters: {listing}"
            )
        try:
            inspect.signature(self.get(name)).bind(**params)
        except TypeError as exc:
            raise InputError(f"bad parameters for {self.family} {name!r}: {exc}. Valid parameters: {listing}") from None

    def available(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def tags(self, name: str) -> frozenset[str]:
        """The tags entry ``name`` was registered with."""
        self.get(name)
        return self._tags[name]

    def tagged(self, *tags: str) -> list[str]:
        """Registered names carrying every one of ``tags``, sorted."""
        want = set(tags)
        return [n for n in self.available() if want <= self._tags[n]]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.available())

    def __len__(self) -> int:
        return len(self._entries)
