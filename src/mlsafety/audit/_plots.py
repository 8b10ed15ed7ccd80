"""Matplotlib helpers for checks: figures without pyplot's global state, saved as PNG bytes."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


def figure(width: float = 5.0, height: float = 3.5) -> Figure:
    """A new figure not registered with pyplot (no global state, safe in any thread)."""
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, for an :class:`~mlsafety.audit.Artifact`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
