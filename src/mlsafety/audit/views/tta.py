"""How the ``tta`` check reads in the report: accuracy with and without adaptation per shift, and the
Distribution Invading Attack's success per method and malicious share."""

from __future__ import annotations

from collections.abc import Sequence

from mlsafety.audit._check import Headline, StoredRow, Table, View, fmt_ci, fmt_value
from mlsafety.core import Hazard

ATTACK_METRICS = (
    "targeted_success_rate",
    "indiscriminate_success_rate",
    "benign_error_rate",
    "benign_error_rate_no_attack",
)


def accuracy_metric(method: str) -> str:
    """The metric of benign accuracy under adaptation method ``method`` (``tent_accuracy``, ``hard_pl_accuracy``)."""
    return f"{method.replace('-', '_')}_accuracy"


def _cell(r: StoredRow | None) -> str:
    return "" if r is None else f"{fmt_value(r.value)} {fmt_ci(r)}"


class TTAView(View):
    """Headline: the highest benign error the indiscriminate attack reached; tables: accuracy with and
    without adaptation per shift, attack success per method and share."""

    @classmethod
    def headlines(cls, rows: Sequence[StoredRow]) -> list[Headline]:
        errs = [r for r in rows if r.metric == "benign_error_rate"]
        if not errs:
            return []
        worst = max(errs, key=lambda r: r.value)
        label = f"Benign error under DIA ({worst.params.get('method')}, m={worst.params.get('share')})"
        return [Headline(label, worst, higher_is_better=False)]

    @classmethod
    def tables(cls, rows: Sequence[StoredRow], title: str = "") -> list[Table]:
        out = []
        methods = list(dict.fromkeys(str(r.params["method"]) for r in rows if "method" in r.params))
        shifts = list(dict.fromkeys(r.hazard for r in rows if r.metric == "accuracy_no_adaptation"))
        by = {(r.hazard, r.metric): r for r in rows}
        if shifts:
            body = [
                [h, _cell(by.get((h, "accuracy_no_adaptation")))]
                + [_cell(by.get((h, accuracy_metric(m)))) for m in methods]
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
        attacked = list(dict.fromkeys(r.hazard for r in rows if r.metric in ATTACK_METRICS))
        if attacked:
            body = []
            for h in attacked:
                hz = Hazard.parse(h)
                method, _, share = (hz.name or "").rpartition("/")
                any_row = next(r for r in rows if r.hazard == h)
                malicious = f"{any_row.params.get('malicious')}/{any_row.params.get('batch_size')}"
                body.append([method, share, malicious, *(_cell(by.get((h, m))) for m in ATTACK_METRICS)])
            out.append(
                Table(
                    "Distribution Invading Attack (DIA) on test-time adaptation",
                    [
                        "method",
                        "share m",
                        "malicious/batch",
                        "targeted success",
                        "indiscriminate success",
                        "benign error",
                        "benign error, no attack",
                    ],
                    body,
                    "Success over attacked batches, error over their benign inputs; exact 95% intervals.",
                )
            )
        rest = [r for r in rows if r.metric not in ATTACK_METRICS and r.hazard not in shifts]
        if rest:
            out += View.tables(rest, title)
        return out
