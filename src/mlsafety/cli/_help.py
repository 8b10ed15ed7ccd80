"""Help texts that show a library entry's default, read from the entry itself (defaults stated once).

A family entry built on the family kit (:class:`mlsafety.core.HyperParams`) describes its
parameters with ``describe_params()``; anything else (a function, a dataclass such as
:class:`mlsafety.audit.AuditConfig`) is read with :func:`inspect.signature`. The entry is imported
only when the help is shown, so ``mlsafety --help`` stays as fast as before.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import click

from mlsafety.core import HyperParams


def param_default(entry: Callable[..., Any] | type, name: str) -> Any:
    """The default of parameter ``name`` of ``entry`` (a HyperParams class, a function or a class).

    Raises:
        KeyError: ``entry`` has no such parameter, or (a plain function or class) no default for it.
    """
    if isinstance(entry, type) and issubclass(entry, HyperParams):
        for key, default, _doc in entry.describe_params():
            if key == name:
                return default  # a required parameter's is the kit's REQUIRED marker
    else:
        param = inspect.signature(entry).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise KeyError(f"{getattr(entry, '__qualname__', entry)!r} has no parameter {name!r} with a default")


def show_default(value: Any) -> str:
    """A default as help texts write it: ``0.001``, ``6``, ``linf``, ``0 0.25 0.5`` (sequences)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return " ".join(show_default(v) for v in value)
    return str(value)


def resolve(spec: str) -> Any:
    """``"package.module:name"`` -> that object (imported now)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class LazyHelp(click.Option):
    """An option whose help has a ``{}`` filled in when the help is shown (importing nothing before).

    Args:
        fill: returns the text for ``{}`` (e.g. a registry's tagged names).
    """

    def __init__(self, *args: Any, fill: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fill = fill

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        template = self.help
        self.help = (template or "").replace("{}", self.fill())
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


class EntryDefault(LazyHelp):
    """An option whose help ends with ``[default: X]``, X read from a library entry when help is shown.

    Args:
        default_from: ``"package.module:name"`` of the entry whose parameter default the option
            falls back to (the option itself defaults to None, so the entry's default applies).
        param: the entry's parameter name; default: the option's own name.
    """

    def __init__(self, *args: Any, default_from: str, param: str | None = None, **kwargs: Any) -> None:
        help_text = kwargs.pop("help", None) or ""
        super().__init__(*args, fill=self.entry_default, help=f"{help_text}  [default: {{}}]".lstrip(), **kwargs)
        self.default_from = default_from
        self.entry_param = param or self.name or ""

    def entry_default(self) -> str:
        """The shown default: the entry's parameter default, formatted."""
        return show_default(param_default(resolve(self.default_from), self.entry_param))
