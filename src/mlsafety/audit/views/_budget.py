"""What a ``--budget`` deadline left out of a check, as one report table.

A task that ran out of time stores a :data:`~mlsafety.audit._budget.BUDGET_NOT_MEASURED` decision row
instead of its figures (its ``reason`` says what and how to get it). A view takes those rows out of its
own tables (they are no sanity flag, trigger or hazard figure) and shows them here, so the report never
drops silently what its headlines and means leave out.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._budget import BUDGET_NOT_MEASURED
from mlsafety.audit._check import StoredRow, Table

TITLE = "Not measured before the deadline (--budget)"


def split_not_measured(rows: Sequence[StoredRow]) -> tuple[list[StoredRow], list[Table]]:
    """The rows without the not-measured ones, and the table of those (none when there are none)."""
    late = [r for r in rows if r.metric == BUDGET_NOT_MEASURED]
    kept = [r for r in rows if r.metric != BUDGET_NOT_MEASURED]
    if not late:
        return kept, []
    body = [[r.hazard, str(r.params.get("reason", ""))] for r in late]
    return kept, [Table(TITLE, ["hazard", "what, and why"], body)]
