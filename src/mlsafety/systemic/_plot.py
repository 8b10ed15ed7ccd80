"""The Swiss-cheese plot: per hazard, what robustness prevents, what the monitor catches, what escapes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from mlsafety.systemic._outcomes import Outcome


def swiss_cheese_png(
    outcomes: Mapping[str, Outcome],
    adaptive: Mapping[str, Outcome] | None = None,
    title: str = "Defence in depth",
    order: Sequence[str] | None = None,
) -> bytes:
    """A horizontal stacked bar per hazard, as a PNG.

    Each bar splits the hazard's inputs into: answered correctly (robustness held), failed but
    flagged by the monitor (caught), and failed unflagged (escaped). For hazards in ``adaptive``
    a black tick marks the escaped share under the monitor-aware attack.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    names = list(order) if order is not None else list(outcomes)
    adaptive = adaptive or {}
    height = 1.6 + 0.32 * len(names)
    fig = Figure(figsize=(8.0, height), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(names)))[::-1]
    prevented = [1.0 - outcomes[h].failure_rate().value for h in names]
    caught = [outcomes[h].caught_rate() for h in names]
    escaped = [outcomes[h].escaped_failure_rate().value for h in names]
    ax.barh(ys, prevented, color="#4c9a5b", label="correct (robustness held)")
    ax.barh(ys, caught, left=prevented, color="#e0b040", label="failed, caught by monitor")
    left = [p + c for p, c in zip(prevented, caught)]
    ax.barh(ys, escaped, left=left, color="#c2413b", label="failed, escaped")
    marked = False
    for y, h in zip(ys, names):
        if h in adaptive:
            e = adaptive[h].escaped_failure_rate().value
            ax.plot(
                [1.0 - e, 1.0 - e],
                [y - 0.4, y + 0.4],
                color="black",
                lw=2,
                label=None if marked else "escaped under adaptive attack (from the right)",
            )
            marked = True
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the hazard's inputs")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
