"""How the ``ood`` check reads in the report: the default detector's AUROC on the first OOD sets, the
ranking of every detector, and near vs far OOD (pooled sets) per detector."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, fmt_ci, fmt_value
from mlsafety.audit.views.ood_basic import OODBasicView, detector_metric, plain_headlines, ranking_table


class OODView(OODBasicView):
    """Headlines: the default detector's AUROC on (at most) three OOD sets; tables: the ranking, and
    AUROC per detector on each pooled group of sets (rows whose params list their ``sets``)."""

    headline_label = "OOD AUROC ({detector})"
    ranking_title = "Detectors ranked by mean AUROC over the OOD sets (OOD = positive)"

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        return plain_headlines(rows, cls.headline_label)[:3]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        tables = ranking_table(rows, title or cls.ranking_title)
        groups = [r for r in rows if "sets" in r.params and r.metric == _auroc_metric(r)]
        if groups:
            kinds = sorted({r.hazard for r in groups})
            dets = list(dict.fromkeys(r.params["detector"] for r in groups))
            val = {(r.params["detector"], r.hazard): r for r in groups}
            body = [[d, *[_cell(val.get((d, k))) for k in kinds]] for d in dets]
            tables.append(Table("Near vs far OOD (pooled sets): AUROC [95% CI]", ["detector", *kinds], body))
        return tables


def _auroc_metric(r: StoredRow) -> str | None:
    """The metric of the AUROC of the row's detector (None: the row names no detector)."""
    det = r.params.get("detector")
    return None if det is None else detector_metric(det, "auroc")


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"
