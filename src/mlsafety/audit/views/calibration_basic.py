"""How the ``calibration-basic`` check reads in the report: the ECE headline (its rows list as the
base view lists them); its reliability diagram is :func:`~mlsafety.audit.views.calibration.reliability_png`."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, View
from mlsafety.audit.views.calibration import reliability_png

__all__ = ["CalibrationBasicView", "reliability_png"]


class CalibrationBasicView(View):
    """Headline: ECE; tables: every row, one line each (the base view's, under the check's title)."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return [Headline("ECE", r, higher_is_better=False) for r in rows if r.metric == "ece"]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        return View.tables(rows, title or "Calibration (baseline)")
