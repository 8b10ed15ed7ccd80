"""Checking an output path before the long work that ends in writing it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlsafety.core._errors import InputError


def check_output_path(
    path: str | Path, *, what: str = "output", flag: str = "--out", example: str = "path/to/file", suffix: str = ""
) -> Path:
    """Raise :class:`InputError` unless a file can be written at ``path``; return it as a ``Path``.

    Call it before work that takes minutes and ends in writing ``path`` (training, an audit), so a
    typo or a read-only folder fails at once, not after the work. Nothing is created: the nearest
    existing folder must be writable (probed with a temporary file removed at once, so a read-only
    file system is caught for root too).

    Args:
        path: the file to be written.
        what: what is written, for the message (``"report"``, ``"weights"``).
        flag: the command-line option that sets it, named in the fix.
        example: an example value for the message.
        suffix: the required file suffix (e.g. ``".safetensors"``), or empty for any.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} path {p} is a folder; pass {flag} {example}")
    if suffix and p.suffix != suffix:
        raise InputError(f"{flag} must end in {suffix}, got {p.name}")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} file {p} is not writable; change its permissions or pass another {flag}")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write the {what} to {p}: {folder} is not a folder; pass another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlsafety-probe-", dir=folder)
    except OSError as exc:
        raise InputError(
            f"cannot write the {what} to {p}: folder {folder} is not writable ({exc.strerror or exc}); "
            f"pass another {flag}"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return p
