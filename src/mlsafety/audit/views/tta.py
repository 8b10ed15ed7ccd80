"""How the ``tta`` check reads in the report: accuracy with and without adaptation per shift, and the
Distribution Invading Attack's success per method and malicious share."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.audit.checks._common import metric_name
from mlsafety.audit.views._budget import split_not_measured

ATTACK_COLUMNS = (
    ("targeted_success_rate", "targeted success"),
    ("stealthy_success_rate", "stealthy success"),
    ("stealthy_others_kept_rate", "stealthy: others kept"),
    ("indiscriminate_success_rate", "indiscriminate success (benign error)"),
    ("benign_error_rate_no_attack", "benign error, no attack"),
    ("batches_flipped_rate", "batches with a benign input flipped"),
)
ATTACK_METRICS = tuple(m for m, _ in ATTACK_COLUMNS)


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


class TTAView(View):
    """Headline: the highest indiscriminate success (benign error under attack); tables: accuracy with
    and without adaptation per shift, attack success per method and share."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        errs = [r for r in rows if r.metric == "indiscriminate_success_rate"]
        if not errs:
            return []
        worst = max(errs, key=lambda r: r.value)
        label = f"Benign error under DIA ({worst.params.get('method')}, m={worst.params.get('share')})"
        return [Headline(label, worst, higher_is_better=False)]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        rows, late = split_not_measured(rows)
        out = []
        methods = list(dict.fromkeys(str(r.params["method"]) for r in rows if "method" in r.params))
        shifts = list(dict.fromkeys(r.hazard for r in rows if r.metric == "accuracy_no_adaptation"))
        by = {(r.hazard, r.metric): r for r in rows}
        if shifts:
            body = [
                [h, _cell(by.get((h, "accuracy_no_adaptation")))]
                + [_cell(by.get((h, metric_name(m, "accuracy")))) for m in methods]
                for h in shifts
            ]
            out.append(
                Table(
                    "Benign accuracy with and without test-time adaptation",
                    ["shift", "no adaptation", *methods],
                    body,
                    "Exact 95% intervals; test data streamed in batches, state carried.",
                )
            )
        attack_rows = [r for r in rows if r.params.get("measure") in ATTACK_METRICS]
        cells = {(r.hazard, r.params.get("batch_size"), r.params["measure"]): r for r in attack_rows}
        attacked = list(dict.fromkeys((r.hazard, r.params.get("batch_size")) for r in attack_rows))
        columns = [(m, label) for m, label in ATTACK_COLUMNS if any(r.params["measure"] == m for r in attack_rows)]
        if attacked:
            body = []
            for h, b in attacked:
                p = next(r for r in attack_rows if (r.hazard, r.params.get("batch_size")) == (h, b)).params
                setting = [str(p.get("method")), f"{p.get('share')}", f"{p.get('malicious')}/{b}"]
                body.append([*setting, str(p.get("attack_on", "")), *(_cell(cells.get((h, b, m))) for m, _ in columns)])
            out.append(
                Table(
                    "Distribution Invading Attack (DIA) on test-time adaptation",
                    ["method", "share m", "malicious/batch", "attacked data", *(label for _, label in columns)],
                    body,
                    "Targeted and stealthy success and flipped batches over attacked batches; benign error and kept "
                    "predictions over their benign inputs; exact 95% intervals.",
                )
            )
        rest = [r for r in rows if r.params.get("measure") not in ATTACK_METRICS and r.hazard not in shifts]
        if rest:
            out += View.tables(rest, title)
        return out + late
