"""Progress reporting for long loops: a rich bar on a terminal, silence otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Shows progress of long loops with rich when ``enabled`` (default: when stderr is a terminal).

    Library functions take ``progress: Progress | None``; None means silent.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def track(self, iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
        if not self.enabled:
            yield from iterable
            return
        from rich.progress import track

        yield from track(iterable, description=description, total=total, transient=True)


def track(
    iterable: Iterable[T], progress: Progress | None, description: str = "", total: int | None = None
) -> Iterator[T]:
    """Iterate with ``progress`` when given, silently otherwise."""
    if progress is None:
        return iter(iterable)
    return progress.track(iterable, description, total)
